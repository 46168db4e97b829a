"""The dashboard's routes for job submitters beyond the job records: runtime env packages and the live
log tail (Ray's routes and protocol, so Ray's clients and ours speak them alike)::

    GET  /api/packages/ember/{sha256}   200 when the head holds that package, else 404
    PUT  /api/packages/ember/{sha256}   store the body (a zip made by ember.runtime.runtime_env.pack)
    WS   /api/jobs/{id}/logs/tail       text messages with the job's output as it comes; closed when it ends

A submitter packs its working_dir and py_modules itself, asks whether the head has each package, uploads
the ones it lacks, and submits the job with package URIs (``ember_pkg://<sha256>``) in their place.
"""

import asyncio
import hashlib

from ember.runtime.runtime_env import PACKAGE_PREFIX, max_bytes

TAIL_POLL_S = 0.2
_HEX = frozenset("0123456789abcdef")


def valid_package_key(key: str) -> bool:
    return len(key) == 64 and set(key) <= _HEX


def same_origin(origin: str | None, host: str | None) -> bool:
    """Whether a WebSocket with this Origin header (None: not from a browser) may connect to a server
    reached as ``host`` (the Host header)."""
    if origin is None:
        return True
    from urllib.parse import urlsplit

    return bool(host) and urlsplit(origin).netloc.lower() == host.lower()


def routes(head, jobs) -> list:
    """The routes above, for ``head`` (the dashboard's HeadClient) and ``jobs`` (its JobManager)."""
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    def package_key(request: Request) -> str | None:
        protocol, key = request.path_params["protocol"], request.path_params["key"]
        return key if protocol == "ember" and valid_package_key(key) else None

    def bad_key() -> JSONResponse:
        return JSONResponse({"error": "A package is named ember/<sha256 of its bytes, in hex>."}, status_code=400)

    def has_package(request: Request):
        key = package_key(request)
        if key is None:
            return bad_key()
        found = bool(head.kv_keys(PACKAGE_PREFIX + key.encode()))
        return JSONResponse({"exists": found}, status_code=200 if found else 404)

    async def put_package(request: Request):
        key = package_key(request)
        if key is None:
            return bad_key()
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes():
            return JSONResponse({"error": f"The package is over {max_bytes()} bytes."}, status_code=413)
        data = await request.body()
        if len(data) > max_bytes():
            return JSONResponse({"error": f"The package is over {max_bytes()} bytes."}, status_code=413)
        if hashlib.sha256(data).hexdigest() != key:
            return JSONResponse({"error": "The package's bytes do not match its sha256."}, status_code=400)
        await run_in_threadpool(jobs.store_package, PACKAGE_PREFIX + key.encode(), data)
        return JSONResponse({"stored": True})

    async def tail_logs(websocket: WebSocket):
        submission_id = websocket.path_params["job_id"]
        if not same_origin(websocket.headers.get("origin"), websocket.headers.get("host")):
            # Browsers let any page open a WebSocket anywhere (no CORS): only our own pages may read logs.
            await websocket.close(code=1008)
            return
        await websocket.accept()
        if await run_in_threadpool(jobs.info, submission_id) is None:
            await websocket.close(code=4404, reason=f"Job {submission_id} does not exist.")
            return
        offset = 0
        try:
            while True:
                info = await run_in_threadpool(jobs.info, submission_id)
                text, offset = await run_in_threadpool(jobs.logs, submission_id, offset)
                if text:
                    await websocket.send_text(text)
                if info is None or info.status.is_terminal():
                    # Read once more after the end: what the driver wrote last may have come after our read.
                    text, offset = await run_in_threadpool(jobs.logs, submission_id, offset)
                    if text:
                        await websocket.send_text(text)
                    await websocket.close()
                    return
                await asyncio.sleep(TAIL_POLL_S)
        except (WebSocketDisconnect, KeyError, RuntimeError, OSError):
            return  # the client went away, or the job was deleted meanwhile

    return [
        Route("/api/packages/{protocol}/{key}", has_package, methods=["GET"]),
        Route("/api/packages/{protocol}/{key}", put_package, methods=["PUT"]),
        WebSocketRoute("/api/jobs/{job_id}/logs/tail", tail_logs),
    ]
