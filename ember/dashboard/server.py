"""The dashboard process: a starlette app served by uvicorn on the socket the head bound for it.

Routes (Ray's names where Ray has them)::

    GET  /                       the overview page (pages.py: every page and its /api/ endpoint), or a
                                 page listing the endpoints when the pages have no event feed
    GET  /api/version            {"ember": version}
    GET  /api/cluster            nodes, total and available resources, task summary counts
    POST /api/jobs/              submit: {"entrypoint": ..., ...} -> {"job_id", "submission_id"}
    GET  /api/jobs/              every job's record
    GET  /api/jobs/{id}          one job's record (404: none)
    DELETE /api/jobs/{id}        forget an ended job -> {"deleted": true}
    POST /api/jobs/{id}/stop     -> {"stopped": bool}
    GET  /api/jobs/{id}/logs     -> {"logs": text}
    WS   /api/jobs/{id}/logs/tail  a WebSocket (as Ray's): the logs as they come, closed when the job ends
    GET|PUT /api/packages/ember/{sha256}  runtime env packages a job submitter uploads (job_routes.py)

Access: bound to loopback when the head is, and then open to this machine (as Ray's dashboard). When
the head listens on a network address, so does the dashboard, and every request must carry the cluster
secret: ``Authorization: Bearer <secret>``, the ``X-Ember-Token`` header or the ``ember_token`` cookie.
"""

import argparse
import asyncio
import hmac
import logging
import os
import socket
import sys
import threading
import time

logger = logging.getLogger("ember.dashboard")

TOKEN_HEADER = "x-ember-token"
TOKEN_COOKIE = "ember_token"


def token_allowed(headers: dict, cookies: dict, token: str | None) -> bool:
    """Whether a request with these headers (lower-case names) and cookies may pass, for a dashboard
    that needs ``token`` (None: it needs none)."""
    if token is None:
        return True
    offered = []
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        offered.append(authorization[7:].strip())
    offered += [headers.get(TOKEN_HEADER, ""), cookies.get(TOKEN_COOKIE, "")]
    return any(value and hmac.compare_digest(value.encode(), token.encode()) for value in offered)


def json_safe(value):
    """msgpack's values as JSON takes them: bytes (ids) as hex, map keys as strings."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {(k.hex() if isinstance(k, bytes) else str(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class HeadClient:
    """One DEALER to the head, shared by the request threads (a lock keeps one request at a time);
    ``name`` says whom errors are about (the dashboard also asks node managers for their logs this way)."""

    def __init__(self, address: str, name: str = "The head"):
        from ember.runtime import transport

        self.address = address
        self.name = name
        self.sock = transport.connect_dealer(address)
        self.lock = threading.Lock()
        self.next_rid = 0

    def request(self, header: dict, frames=(), timeout: float = 10.0) -> tuple[dict, list]:
        from ember.runtime import protocol

        with self.lock:
            self.next_rid += 1
            rid = self.next_rid.to_bytes(8, "little")
            self.sock.send_multipart(protocol.encode({**header, "rid": rid}, list(frames)))
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.sock.poll(int(remaining * 1000) + 1):
                    raise ConnectionError(f"{self.name} at {self.address} did not answer within {timeout:g} s.")
                reply, reply_frames = protocol.decode(self.sock.recv_multipart())
                if reply.get("rid") != rid:
                    continue  # a late answer to a request that timed out
                if reply.get("op") == protocol.ERROR:
                    raise RuntimeError(f"{self.name} refused {header['op']}: {reply.get('error')}")
                return reply, reply_frames

    def kv_get(self, key: bytes) -> bytes | None:
        from ember.runtime import protocol

        reply, frames = self.request({"op": protocol.KV_GET, "key": key})
        return bytes(frames[0]) if reply.get("found") and frames else None

    def kv_put(self, key: bytes, value: bytes, overwrite: bool = True) -> bool:
        from ember.runtime import protocol

        reply, _ = self.request({"op": protocol.KV_PUT, "key": key, "overwrite": overwrite}, [value])
        return bool(reply.get("added"))

    def kv_del(self, key: bytes) -> bool:
        from ember.runtime import protocol

        return bool(self.request({"op": protocol.KV_DEL, "key": key})[0].get("deleted"))

    def kv_keys(self, prefix: bytes) -> list:
        from ember.runtime import protocol

        return list(self.request({"op": protocol.KV_KEYS, "prefix": prefix})[0].get("keys") or [])

    def cluster(self) -> dict:
        """What /api/cluster answers: the nodes, resources summed over live nodes, task counts."""
        from ember.runtime import protocol

        nodes = self.request({"op": protocol.GET_NODES})[0].get("nodes") or []
        summary = self.request({"op": protocol.STATE_QUERY, "kind": "summary"})[0].get("summary") or {}
        total: dict = {}
        available: dict = {}
        for node in nodes:
            if node.get("alive"):
                for name, amount in (node.get("resources") or {}).items():
                    total[name] = total.get(name, 0) + amount
                for name, amount in (node.get("available") or {}).items():
                    available[name] = available.get(name, 0) + amount
        return json_safe(
            {
                "nodes": [
                    {
                        k: node.get(k)
                        for k in ("node_id", "address", "host", "alive", "resources", "available", "store", "ram")
                    }
                    for node in nodes
                ],
                "resources": {"total": total, "available": available},
                "tasks": {"counts": summary.get("counts", {}), "running": summary.get("running", 0)},
            }
        )

    def close(self) -> None:
        self.sock.close(0)


INDEX = """<!doctype html><html><head><meta charset="utf-8"><title>Ember dashboard</title></head>
<body style="font-family:system-ui,sans-serif"><h1>Ember dashboard</h1><p>Head: <code>{head}</code></p>
<p>JSON endpoints:</p><ul>
<li><a href="api/cluster">/api/cluster</a>: nodes, resources, task counts</li>
<li><a href="api/jobs/">/api/jobs/</a>: jobs (POST to submit; /api/jobs/&lt;id&gt;, /stop, /logs, /logs/tail)</li>
<li><a href="api/version">/api/version</a></li></ul></body></html>"""


def build_app(head: HeadClient, jobs, token: str | None, pages=None):
    """The starlette application: the routes above, behind the token check when ``token`` is set;
    with ``pages`` (pages.Pages), the dashboard's pages and their endpoints too (``/`` is the overview)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    from ember.dashboard import job_routes
    from ember.dashboard import pages as pages_module

    def error(status: int, text: str) -> JSONResponse:
        return JSONResponse({"error": text}, status_code=status)

    def not_found(submission_id: str) -> JSONResponse:
        return error(404, f"Job {submission_id} does not exist.")

    def index(request: Request):
        import html

        return HTMLResponse(INDEX.format(head=html.escape(head.address)))

    def version(request: Request):
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as package_version

        try:
            number = package_version("ember")
        except PackageNotFoundError:
            number = "unknown"
        return JSONResponse({"ember": number, "api": "jobs-v1"})

    def cluster(request: Request):
        return JSONResponse(head.cluster())

    async def submit(request: Request):
        try:
            body = await request.json()
        except ValueError:
            return error(400, "The body must be a JSON object.")
        try:
            from starlette.concurrency import run_in_threadpool

            submission_id = await run_in_threadpool(jobs.submit, body)
        except (ValueError, TypeError) as problem:
            return error(400, str(problem))
        return JSONResponse({"job_id": submission_id, "submission_id": submission_id})

    def list_jobs(request: Request):
        return JSONResponse([job.to_json() for job in jobs.list()])

    def job_info(request: Request):
        submission_id = request.path_params["job_id"]
        info = jobs.info(submission_id)
        return not_found(submission_id) if info is None else JSONResponse(info.to_json())

    def delete_job(request: Request):
        submission_id = request.path_params["job_id"]
        try:
            return JSONResponse({"deleted": jobs.delete(submission_id)})
        except KeyError:
            return not_found(submission_id)
        except ValueError as problem:
            return error(400, str(problem))

    def stop_job(request: Request):
        submission_id = request.path_params["job_id"]
        try:
            return JSONResponse({"stopped": jobs.stop(submission_id)})
        except KeyError:
            return not_found(submission_id)

    def job_logs(request: Request):
        submission_id = request.path_params["job_id"]
        try:
            return JSONResponse({"logs": jobs.logs(submission_id)[0]})
        except KeyError:
            return not_found(submission_id)

    routes = [] if pages is None else pages_module.routes(pages)
    routes += [
        Route("/", index),
        Route("/api/version", version),
        Route("/api/cluster", cluster),
        Route("/api/jobs/", submit, methods=["POST"]),
        Route("/api/jobs/", list_jobs, methods=["GET"]),
        Route("/api/jobs/{job_id}", job_info, methods=["GET"]),
        Route("/api/jobs/{job_id}", delete_job, methods=["DELETE"]),
        Route("/api/jobs/{job_id}/stop", stop_job, methods=["POST"]),
        Route("/api/jobs/{job_id}/logs", job_logs, methods=["GET"]),
        *job_routes.routes(head, jobs),
    ]
    app = Starlette(routes=routes)

    async def guarded(scope, receive, send):
        if scope["type"] in ("http", "websocket") and token is not None:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            cookies = {}
            for part in headers.get("cookie", "").split(";"):
                name, _, value = part.strip().partition("=")
                cookies[name] = value
            if not token_allowed(headers, cookies, token):
                if scope["type"] == "websocket":
                    from starlette.websockets import WebSocketClose

                    await WebSocketClose(code=1008, reason="This dashboard needs the cluster's secret.")(
                        scope, receive, send
                    )
                    return
                offered = pages_module.token_in_query(scope.get("query_string", b""))
                if offered and token_allowed({}, {TOKEN_COOKIE: offered}, token):
                    # A browser cannot send a header on a link: ?token= once, then the cookie.
                    await pages_module.token_redirect(scope["path"], offered, TOKEN_COOKIE)(scope, receive, send)
                    return
                await JSONResponse(
                    {"error": "This dashboard needs the cluster's secret (Authorization: Bearer <secret>)."},
                    status_code=401,
                )(scope, receive, send)
                return
        await app(scope, receive, send)

    return guarded


def _start_feed(head: HeadClient):
    """The pages' event feed, on the event hub the head recorded; None (logged) when it did not."""
    from ember.dashboard import EVENTS_KEY
    from ember.dashboard.pages_feed import PagesFeed

    try:
        address = head.kv_get(EVENTS_KEY)
    except (ConnectionError, RuntimeError) as error:
        logger.warning("no pages: %s", error)
        return None
    if not address:
        logger.warning("no pages: the head recorded no event hub address")
        return None
    return PagesFeed(address.decode(), head).start()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="ember-dashboard")
    parser.add_argument("--fd", type=int, required=True, help="the listening socket the head bound")
    parser.add_argument("--head", required=True, help="the head's address")
    parser.add_argument("--url", required=True)
    parser.add_argument("--session-dir", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    import uvicorn

    from ember.dashboard.jobs import JobManager
    from ember.dashboard.pages import Pages
    from ember.runtime import transport

    sock = socket.socket(fileno=args.fd)
    host = sock.getsockname()[0]
    networked = not (host == "localhost" or host.startswith("127.") or host == "::1")
    token = transport.current_token() if networked else None
    head = HeadClient(args.head)
    jobs = JobManager(head, args.head)
    feed = _start_feed(head)
    pages = Pages(feed, head, jobs, os.path.join(args.session_dir, "logs")) if feed is not None else None
    app = build_app(head, jobs, token, pages)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)

    def watch_parent():
        # The head's process holds our stdin: EOF means it is gone, or stopping us.
        while os.read(0, 4096):
            pass
        server.should_exit = True

    threading.Thread(target=watch_parent, name="ember-dashboard-parent", daemon=True).start()
    logger.info("dashboard for head %s at %s%s", args.head, args.url, " (cluster secret required)" if token else "")
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        if feed is not None:
            feed.stop()
        jobs.close()
        head.close()


if __name__ == "__main__":
    main()
