"""The dashboard's pages and the JSON endpoints behind them (starlette routes, added by server.py).

    GET /, /nodes, /tasks, /actors, /objects, /placement_groups, /jobs, /serve, /logs
        one HTML shell (pages_static/page.html): a nav bar, the theme, and a script that fetches
        /api/view/<page> every second while the tab is visible and swaps the view's HTML in
    GET /api/view/<page>    {"html": the view, "data": what the JSON endpoint below answers}
    GET /api/overview, /api/nodes, /api/tasks, /api/actors, /api/objects, /api/placement_groups,
        /api/serve (Serve's status from its controller, through a driver connection opened on first use)
    GET /api/logs           the head machine's session log files, and every alive node's own files;
        /api/logs/<file>?tail=N its last N bytes; ?node=ID: that node's files, read from its node
        manager (pages_logs.NodeLogs)

The cluster's aggregates, nodes and actors come from the dashboard process's event feed
(pages_feed.PagesFeed), read under its lock. What needs single tasks (the task stream, the workers
table, the recent and failed tasks) is the head's ``activity`` answer, asked at most every
``ACTIVITY_TTL`` seconds however many pages ask; placement groups and jobs are the head's small tables.
"""

import html
import os
import pathlib
import threading
import time

from ember.dashboard import pages_views as pv
from ember.dashboard.pages_logs import NodeLogs
from ember.widgets.graph import TaskGraphModel, to_svg
from ember.widgets.render import actors_html, cluster_html, gpus_html, store_html

PAGES = {  # path -> (title, view name)
    "/": ("Overview", "overview"),
    "/nodes": ("Nodes", "nodes"),
    "/tasks": ("Tasks", "tasks"),
    "/actors": ("Actors", "actors"),
    "/objects": ("Objects", "objects"),
    "/placement_groups": ("Placement groups", "placement_groups"),
    "/jobs": ("Jobs", "jobs"),
    "/serve": ("Serve", "serve"),
    "/logs": ("Logs", "logs"),
}
LOG_TAIL = 64 * 1024  # bytes of a log file a page shows by default
SERVE_TIMEOUT = 5.0  # seconds the Serve page waits for the controller's status
ACTIVITY_TTL = 0.5  # seconds one activity answer serves every page (they refresh each second)
RECENT = 200  # tasks the tasks page lists
SHELL = (pathlib.Path(__file__).parent / "pages_static" / "page.html").read_text()


def shell(path: str) -> str:
    """The HTML page at ``path``: the shared shell with its title, nav and view name filled in."""
    from ember.widgets.render import STYLE

    title, name = PAGES[path]
    nav = "".join(
        f"<a href='{_relative(p)}'{' class=current' if p == path else ''}>{html.escape(t)}</a>"
        for p, (t, _) in PAGES.items()
    )
    return (
        SHELL.replace("{{title}}", html.escape(title))
        .replace("{{nav}}", nav)
        .replace("{{view}}", name)
        .replace("{{style}}", STYLE)
    )


class Pages:
    """The views' data and HTML, from ``feed`` (a PagesFeed), ``head`` (a HeadClient), ``jobs`` (the
    JobManager) and ``log_dir`` (the session's logs)."""

    def __init__(self, feed, head, jobs, log_dir: str):
        self.feed, self.head, self.jobs, self.log_dir = feed, head, jobs, log_dir
        self.node_logs = NodeLogs(head)
        self.graph = TaskGraphModel(threshold=0)  # by function: the aggregates are all this process has
        self._activity_lock = threading.Lock()
        self._activity: dict | None = None
        self._activity_at = 0.0

    def activity(self) -> dict:
        """The head's answer on single tasks (see task_activity.py), at most ``ACTIVITY_TTL`` old."""
        from ember.runtime import protocol

        with self._activity_lock:
            if self._activity is None or time.monotonic() - self._activity_at > ACTIVITY_TTL:
                self._activity = self.head.request({"op": protocol.STATE_QUERY, "kind": "activity", "limit": RECENT})[0]
                self._activity_at = time.monotonic()
            return self._activity

    # --- data ---------------------------------------------------------------------------------------------
    def overview(self) -> dict:
        failures = pv.failures(self.activity()["failures"])
        with self.feed.lock:
            state = self.feed.state
            data = {
                "nodes": len(pv.alive_nodes(state)),
                "resources": pv.resources(state),
                "object_store": pv.store_totals(state),
                "tasks": self.feed.totals(),
                "actors_alive": sum(1 for a in state.actors.values() if a.get("state") != "DEAD"),
                "failures": failures,
            }
        data["jobs"] = [job_row(job) for job in self.jobs.list()[-5:]] if self.jobs is not None else []
        return data

    def nodes(self) -> dict:
        rows = self.activity()["workers"]
        with self.feed.lock:
            state = self.feed.state
            nodes = [
                {
                    k: node.get(k)
                    for k in (
                        "node_id",
                        "alive",
                        "address",
                        "resources",
                        "available",
                        "store",
                        "ram",
                        "gpus",
                        "workers",
                    )
                }
                for node in state.nodes.values()
            ]
            workers = pv.workers(rows, state)
        return _json_safe({"nodes": nodes, "workers": workers})

    def tasks(self) -> dict:
        activity = self.activity()
        with self.feed.lock:
            totals, by_function = self.feed.totals(), pv.by_function(self.feed.state)
        return _json_safe(
            {
                **totals,
                "by_function": by_function,
                "stream": pv.task_stream(activity["stream"]),
                "failures": pv.failures(activity["failures"]),
                "recent": [
                    {
                        "task_id": row["task_id"].hex(),
                        "name": row["name"],
                        "state": row["state"],
                        "node_id": row.get("node"),
                        "pid": row.get("pid"),
                        "started": row.get("running"),
                        "ended": row.get("finished", row.get("failed")),
                        "error": None if row.get("error") is None else str(row["error"])[:500],
                    }
                    for row in activity["recent"]
                ],
            }
        )

    def actors(self) -> dict:
        with self.feed.lock:
            state = self.feed.state
            return _json_safe(
                {
                    "actors": [
                        {"actor_id": k, **a, "calls": state.actor_calls.get(k, 0)} for k, a in state.actors.items()
                    ]
                }
            )

    def objects(self) -> dict:
        with self.feed.lock:
            state = self.feed.state
            per_node, largest = [], []
            for node in state.nodes.values():
                store = node.get("store") or {}
                per_node.append({"node_id": node["node_id"], **{k: v for k, v in store.items() if k != "largest"}})
                for oid, size in store.get("largest") or []:
                    largest.append(
                        {"object_id": oid, "size": size, "node_id": node["node_id"], "made_by": state.creator_of(oid)}
                    )
            largest.sort(key=lambda entry: entry["size"], reverse=True)
            return _json_safe({"total": pv.store_totals(state), "nodes": per_node, "largest": largest[:20]})

    def placement_groups(self) -> dict:
        from ember.runtime import protocol

        table = self.head.request({"op": protocol.PLACEMENT_GROUP_TABLE})[0].get("table") or {}
        return _json_safe({"placement_groups": pv.placement_groups(table)})

    def serve(self) -> dict:
        """Serve's applications, deployments and replicas as its controller reports them, asked through
        this process's driver connection (opened on the first look); ``{"running": False}`` when Serve
        does not run on the cluster."""
        if self.jobs is None:
            return {"running": False}
        import ember
        from ember.serve import context as serve_context

        self.jobs.connect()
        try:
            controller = ember.get_actor(serve_context.CONTROLLER_NAME, namespace=serve_context.SERVE_NAMESPACE)
        except ValueError:
            return {"running": False}
        try:
            status = ember.get(controller.status.remote(), timeout=SERVE_TIMEOUT)
        except Exception as error:  # a controller dead or busy: the page says so and asks again
            return {"running": True, "error": f"{type(error).__name__}: {error}"}
        return _json_safe({"running": True, **status})

    def logs(self, node: str | None = None) -> dict:
        """Each alive node's own log files as its node manager lists them (its process's, its
        workers' with their pids), then the files of the session's log directory that no node
        claims (the dashboard's, start-up, runtime env set-ups, nodes gone). With ``node`` (an id),
        only that node's (KeyError: no such node)."""
        if node:
            return {"node_id": node, "files": self.node_logs.files(node)}
        nodes = self.node_logs.every_node()
        claimed = {f["name"] for entry in nodes for f in entry["files"]}
        files = []
        try:
            entries = sorted(os.scandir(self.log_dir), key=lambda e: e.name)
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if entry.is_file() and entry.name not in claimed:
                files.append({"name": entry.name, "kind": _log_kind(entry.name), "size": entry.stat().st_size})
        return {"log_dir": self.log_dir, "files": files, "nodes": nodes}

    def log_text(self, name: str, tail: int = LOG_TAIL, node: str | None = None) -> str:
        """The last ``tail`` bytes of one log file: of the session's log directory, or with ``node``,
        that node's file as its node manager reads it; KeyError when ``name`` is not such a file (no
        path may lead out of the directory)."""
        if node:
            return self.node_logs.text(node, name, tail)
        if not name or name != os.path.basename(name) or name.startswith("."):
            raise KeyError(name)
        path = os.path.join(self.log_dir, name)
        if not os.path.isfile(path):
            raise KeyError(name)
        with open(path, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - tail))
            return file.read().decode(errors="replace")

    # --- views --------------------------------------------------------------------------------------------
    def view(self, name: str, params: dict) -> dict:
        """``{"html", "data"}`` of the page ``name``; KeyError for no such page."""
        if name == "overview":
            data = self.overview()
            with self.feed.lock:
                cluster = cluster_html(self.feed.state, compact=True)
            return {"html": pv.overview_html(data, cluster), "data": data}
        if name == "nodes":
            data = self.nodes()
            with self.feed.lock:
                text = cluster_html(self.feed.state) + gpus_html(self.feed.state)
            return {"html": text + pv.workers_html(data["workers"]), "data": data}
        if name == "tasks":
            data = self.tasks()
            with self.feed.lock:
                graph = to_svg(self.graph.build(self.feed.state), width=960)
            counts = " · ".join(f"<span class='ember-count-{s}'>{n}</span> {s}" for s, n in data["counts"].items())
            text = (
                pv.view(
                    "tasks",
                    f"<b>Tasks</b>: <span class='ember-tasks-per-s'>{data['tasks_per_s']:g}</span> tasks/s · {counts}",
                )
                + pv.view("stream", "<b>Task stream</b> (per worker, last 30 s)" + pv.task_stream_svg(data["stream"]))
                + pv.by_function_html(data["by_function"])
                + pv.view("graph", "<b>Task graph</b>" + graph)
            )
            return {"html": text, "data": data}
        if name == "actors":
            data = self.actors()
            with self.feed.lock:
                return {"html": actors_html(self.feed.state), "data": data}
        if name == "objects":
            data = self.objects()
            with self.feed.lock:
                return {"html": store_html(self.feed.state), "data": data}
        if name == "placement_groups":
            data = self.placement_groups()
            return {"html": pv.placement_groups_html(data["placement_groups"]), "data": data}
        if name == "jobs":
            jobs = [job_row(job) for job in self.jobs.list()] if self.jobs is not None else []
            wanted = params.get("job") or (jobs[-1]["submission_id"] if jobs else None)
            selected = None
            if wanted:
                try:
                    selected = {"submission_id": wanted, "logs": self._job_log_tail(wanted)}
                except KeyError:
                    selected = None
            return {"html": pv.jobs_html(jobs, selected), "data": {"jobs": jobs, "selected": selected}}
        if name == "serve":
            from ember.serve.monitor import status_html

            data = self.serve()
            if not data["running"]:
                text = "<p>Serve is not running on this cluster: <code>serve.run(app)</code> starts it.</p>"
            elif "error" in data:
                text = f"<p>Serve's controller did not answer: {html.escape(data['error'])}</p>"
            else:
                return {"html": status_html(data), "data": data}
            return {"html": pv.view("serve", text), "data": data}
        if name == "logs":
            data = self.logs()
            selected = None
            if params.get("file"):
                node = params.get("node") or None
                selected = {"name": params["file"], "node_id": node}
                try:
                    selected["text"] = self.log_text(params["file"], node=node)
                except KeyError:
                    selected["text"] = "(no such log file)"
                except ConnectionError as error:
                    selected["text"] = f"({error})"
            return {"html": pv.logs_html(data["files"], selected, data["nodes"]), "data": data}
        raise KeyError(name)

    def _job_log_tail(self, submission_id: str) -> str:
        """The last ``LOG_TAIL`` bytes of a job's log (read from there: a page asks every second, and
        a long job's log is large). KeyError: no such job."""
        from ember.dashboard.jobs import log_path

        info = self.jobs.info(submission_id)
        if info is None:
            raise KeyError(submission_id)
        try:
            size = os.path.getsize(info.log_path or log_path(submission_id))
        except OSError:
            size = 0
        return self.jobs.logs(submission_id, max(0, size - LOG_TAIL))[0]


def job_row(job) -> dict:
    record = job.to_json()
    return {
        "submission_id": record.get("submission_id") or record.get("job_id") or "",
        "status": str(record.get("status") or ""),
        "entrypoint": str(record.get("entrypoint") or ""),
        "message": record.get("message"),
        "start_time": record.get("start_time"),
        "end_time": record.get("end_time"),
    }


def token_in_query(query_string: bytes) -> str | None:
    """The ``token`` parameter of a request's query string (a link to a networked dashboard carries
    the cluster secret once: ``http://host:8265/?token=...``)."""
    from urllib.parse import parse_qs

    values = parse_qs(query_string.decode("latin-1")).get("token")
    return values[0] if values else None


def _relative(path: str) -> str:
    """A page's link relative to the page it is on: every page sits at the top, so the links hold
    behind a proxy that serves the dashboard under a prefix (JupyterLab's /proxy/8265/)."""
    return path.rsplit("/", 1)[-1] or "./"


def token_redirect(path: str, token: str, cookie: str):
    """A redirect to ``path`` without the token in its address, setting the cookie that carries it
    from then on (HTTP-only, same site: page scripts and other sites never read it)."""
    from starlette.responses import RedirectResponse

    response = RedirectResponse(_relative(path), status_code=303)
    response.set_cookie(cookie, token, httponly=True, samesite="strict")
    return response


def _log_kind(name: str) -> str:
    for prefix, kind in (
        ("worker-", "worker"),
        ("cluster-", "node (head and node manager)"),
        ("dashboard", "dashboard"),
        ("runtime_env-", "runtime env setup"),
    ):
        if name.startswith(prefix):
            return kind
    return "other"


def _json_safe(value):
    from ember.dashboard.server import json_safe

    return json_safe(value)


def routes(pages: Pages) -> list:
    """The starlette routes of the pages and their endpoints."""
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
    from starlette.routing import Route

    def page(request: Request):
        return HTMLResponse(shell(request.url.path))

    def view(request: Request):
        params = dict(request.query_params)
        # The pages ask for the HTML only: encoding the data beside it doubled the JSON a page costs
        # the dashboard each second (scripts read the data from the endpoints).
        html_only = params.pop("html_only", None) is not None
        try:
            body = pages.view(request.path_params["page"], params)
            return JSONResponse({"html": body["html"]} if html_only else body)
        except KeyError:
            return JSONResponse({"error": f"No page {request.path_params['page']!r}."}, status_code=404)

    def endpoint(method):
        return lambda request: JSONResponse(method())

    def log_files(request: Request):
        node = request.query_params.get("node")
        try:
            return JSONResponse(pages.logs(node))
        except KeyError:
            return JSONResponse({"error": f"No alive node {node!r}."}, status_code=404)
        except ConnectionError as error:
            return JSONResponse({"error": str(error)}, status_code=504)

    def log_file(request: Request):
        name, node = request.path_params["name"], request.query_params.get("node")
        try:
            tail = int(request.query_params.get("tail", LOG_TAIL))
        except ValueError:
            return JSONResponse({"error": "tail must be a number of bytes."}, status_code=400)
        try:
            return PlainTextResponse(pages.log_text(name, max(0, tail), node))
        except KeyError:
            where = f" on node {node}" if node else ""
            return JSONResponse({"error": f"No log file {name!r}{where}."}, status_code=404)
        except ConnectionError as error:
            return JSONResponse({"error": str(error)}, status_code=504)

    result = [Route(path, page) for path in PAGES]
    result += [
        Route("/api/view/{page}", view),
        Route("/api/overview", endpoint(pages.overview)),
        Route("/api/nodes", endpoint(pages.nodes)),
        Route("/api/tasks", endpoint(pages.tasks)),
        Route("/api/actors", endpoint(pages.actors)),
        Route("/api/objects", endpoint(pages.objects)),
        Route("/api/placement_groups", endpoint(pages.placement_groups)),
        Route("/api/serve", endpoint(pages.serve)),
        Route("/api/logs", log_files),
        Route("/api/logs/{name}", log_file),
    ]
    return result
