"""What each dashboard page shows: its numbers as JSON-ready dicts and its HTML, from a ``ClusterState``
(aggregates, nodes, actors) and the head's ``activity`` answer (task stream, workers, recent tasks).

Plain functions, no I/O: the pages module reads the feed's state under its lock and calls them. The
views the notebook widgets show (cluster, object store, GPUs, actors, the task graph's SVG) come from
``ember.widgets.render`` and ``ember.widgets.graph`` unchanged; only what the widgets do not have is
drawn here (the overview's figures, the workers table, the task stream, placement groups, jobs, logs).
"""

import html
import zlib
from urllib.parse import quote

from ember.runtime.cluster_state import FAILED, STATES
from ember.widgets.render import fmt_byte_pair, fmt_bytes, table, view

PALETTE = ("#3b82f6", "#22c55e", "#a855f7", "#f59e0b", "#14b8a6", "#ec4899", "#84cc16", "#6366f1", "#f97316")


def _hex(value) -> str | None:
    return value.hex() if isinstance(value, bytes) else value


def alive_nodes(state) -> list:
    return [node for node in state.nodes.values() if node.get("alive", True)]


def resources(state) -> dict:
    """Total and available resources summed over the live nodes."""
    total: dict = {}
    available: dict = {}
    for node in alive_nodes(state):
        for name, amount in (node.get("resources") or {}).items():
            total[name] = total.get(name, 0) + amount
        for name, amount in (node.get("available") or {}).items():
            available[name] = available.get(name, 0) + amount
    return {"total": total, "available": available}


def failures(rows: list) -> list:
    """The failed tasks of the head's activity answer (oldest first there), newest first."""
    return [
        {"task_id": _hex(row["task_id"]), "name": row["name"], "error": str(row.get("error") or "")[:500]}
        for row in reversed(rows)
    ]


def workers(rows: list, state) -> list:
    """The worker processes the head's activity answer and the actors name: node, pid, state (running
    a task, an actor, or idle since its last task), what it runs or ran last, and tasks it ended."""
    by_pid = {row["pid"]: dict(row) for row in rows}
    for actor in state.actors.values():
        pid = actor.get("pid")
        if pid and actor.get("state") != "DEAD":
            entry = by_pid.setdefault(pid, {"pid": pid, "node_id": actor.get("node_id"), "tasks": 0})
            entry["state"], entry["task"] = "actor", str(actor.get("class_name") or "")
    return sorted(by_pid.values(), key=lambda entry: (str(entry["node_id"]), entry["pid"]))


def workers_html(rows: list) -> str:
    cells = [
        f"<tr class='ember-worker'><td><code>{html.escape(str(row['node_id'] or '')[:8])}</code></td>"
        f"<td class='ember-num ember-worker-pid'>{row['pid']}</td>"
        f"<td class='ember-worker-state'>{html.escape(row['state'])}</td><td>{html.escape(row['task'])}</td>"
        f"<td class='ember-num'>{row['tasks']}</td></tr>"
        for row in rows
    ]
    heads = ["node", "pid", "state", "task (now or last)", "tasks ended"]
    return view("workers", "<b>Workers</b>" + table(heads, cells, "no task seen yet", ("pid", "tasks ended")))


def overview_html(data: dict, cluster_view: str) -> str:
    """The headline figures above the cluster view, then failures and recent jobs."""
    counts = data["tasks"]["counts"]
    figures = (
        f"<div class='ember-figures'>"
        f"<div><span class='ember-figure ember-tasks-per-s'>{data['tasks']['tasks_per_s']:g}</span> tasks/s</div>"
        f"<div><span class='ember-figure ember-running'>{data['tasks']['running']}</span> running</div>"
        f"<div><span class='ember-figure ember-finished'>{counts['finished']}</span> finished</div>"
        f"<div><span class='ember-figure ember-failed'>{counts['failed']}</span> failed</div>"
        f"<div><span class='ember-figure ember-actors-alive'>{data['actors_alive']}</span> actors</div></div>"
    )
    failed = [
        f"<tr class='ember-failure'><td>{html.escape(f['name'])}</td><td>{html.escape(f['error'][:160])}</td></tr>"
        for f in data["failures"]
    ]
    jobs = [
        f"<tr class='ember-job'><td><a href='jobs?job={html.escape(j['submission_id'])}'>"
        f"{html.escape(j['submission_id'])}</a></td><td class='ember-job-status'>{html.escape(j['status'])}</td>"
        f"<td>{html.escape(j['entrypoint'][:80])}</td></tr>"
        for j in data["jobs"]
    ]
    return (
        view("overview", figures)
        + cluster_view
        + view("failures", "<b>Recent failures</b>" + table(["task", "error"], failed, "none seen"))
        + view("jobs", "<b>Recent jobs</b>" + table(["job", "status", "entrypoint"], jobs, "none"))
    )


def _colour(name: str) -> str:
    return PALETTE[zlib.crc32(name.encode()) % len(PALETTE)]


def task_stream(activity: dict) -> dict:
    """The head's per-worker slots as bars per worker (Dask's task stream, at any task rate):
    ``{"start", "end", "workers": [[node, pid]], "bars": [[row, start, end, name, state, busy, tasks]]}``,
    where a bar is a run of time a function kept that worker ``busy`` (a share) ending ``tasks`` tasks."""
    bars = []
    for row, worker in enumerate(activity["workers"]):
        for began, ended, name, busy, tasks, failed in worker["runs"]:
            bars.append([row, began, ended, name, FAILED if failed else "finished", busy, tasks])
    workers_ = [[worker["node"] or "", worker["pid"]] for worker in activity["workers"]]
    return {"start": activity["start"], "end": activity["end"], "workers": workers_, "bars": bars}


def task_stream_svg(stream: dict, width: int = 960, row_h: int = 16) -> str:
    """The task stream as SVG: one row per worker, a bar per run of a function coloured by it (as tall
    as the worker was busy; failed tasks among it: red outline), time left to right; ``<title>`` carries
    the function, the tasks ended and how busy."""
    workers_ = stream["workers"]
    if not workers_:
        return "<div class='ember-note ember-stream-empty'>No task ran in the last 30 s.</div>"
    label_w = 110
    span = max(stream["end"] - stream["start"], 1e-6)
    scale = (width - label_w - 10) / span
    height = len(workers_) * row_h + 20
    parts = [
        f"<svg class='ember-task-stream' xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {width} {height}' "
        f"width='{width}' height='{height}' style='max-width:100%;height:auto' font-family='sans-serif' font-size='10'>"
    ]
    for index, (node, pid) in enumerate(workers_):
        y = index * row_h
        parts.append(
            f"<text x='0' y='{y + row_h - 4}' fill='currentColor'>{html.escape(str(node)[:8])} {pid}</text>"
            f"<line x1='{label_w}' x2='{width - 10}' y1='{y + row_h}' y2='{y + row_h}' stroke='#8884'/>"
        )
    for row, began, ended, name, state, busy, tasks in stream["bars"]:
        x = label_w + (began - stream["start"]) * scale
        w = max(1.0, (ended - began) * scale)
        h = max(2.0, (row_h - 4) * busy)
        outline = " stroke='#ef4444' stroke-width='1.5'" if state == FAILED else ""
        parts.append(
            f"<rect class='ember-stream-bar' x='{x:.1f}' y='{row * row_h + row_h - 2 - h:.1f}' width='{w:.1f}' "
            f"height='{h:.1f}' fill='{_colour(name)}'{outline}><title>{html.escape(name)}: {tasks} ended, "
            f"{busy:.0%} busy over {ended - began:.2f} s</title></rect>"
        )
    axis_y = len(workers_) * row_h + 14
    parts.append(f"<text x='{label_w}' y='{axis_y}' fill='currentColor'>-{span:.0f} s</text>")
    parts.append(f"<text x='{width - 10}' y='{axis_y}' text-anchor='end' fill='currentColor'>now</text></svg>")
    return "".join(parts)


def by_function(state) -> list:
    """Per function: tasks per state and mean duration of the ended ones."""
    rows = []
    for name, counts in sorted(state.by_name.items()):
        seconds, ended = state.durations.get(name) or (0.0, 0)
        rows.append(
            {"name": name, **{s: counts.get(s, 0) for s in STATES}, "mean_s": seconds / ended if ended else None}
        )
    return rows


def by_function_html(rows: list) -> str:
    cells = []
    for row in rows:
        mean = "" if row["mean_s"] is None else f"{row['mean_s'] * 1000:.1f} ms"
        cells.append(
            f"<tr class='ember-function'><td><span style='color:{_colour(row['name'])}'>\u25a0</span> "
            f"{html.escape(row['name'])}</td>"
            + "".join(f"<td class='ember-num ember-fn-{s}'>{row[s]}</td>" for s in STATES)
            + f"<td class='ember-num'>{mean}</td></tr>"
        )
    heads = ["function", *STATES, "mean time"]
    return view("functions", "<b>By function</b>" + table(heads, cells, "no tasks yet", (*STATES, "mean time")))


def placement_groups(table_: dict) -> list:
    """The head's placement group table as JSON-ready rows."""
    rows = []
    for pg_id, entry in (table_ or {}).items():
        bundles = entry.get("bundles") or {}
        placed = entry.get("bundles_to_node_id") or {}
        rows.append(
            {
                "placement_group_id": _hex(pg_id),
                "name": entry.get("name") or "",
                "state": entry.get("state"),
                "strategy": entry.get("strategy"),
                "bundles": [
                    {"index": int(i), "resources": bundles[i], "node_id": _hex(placed.get(i))}
                    for i in sorted(bundles, key=int)
                ],
            }
        )
    return rows


def placement_groups_html(rows: list) -> str:
    cells = []
    for row in rows:
        bundles = "<br>".join(
            html.escape(", ".join(f"{k}: {v:g}" for k, v in b["resources"].items()))
            + (f" on <code>{html.escape(str(b['node_id'])[:8])}</code>" if b["node_id"] else "")
            for b in row["bundles"]
        )
        cells.append(
            f"<tr class='ember-pg'><td><code>{html.escape(row['placement_group_id'][:12])}</code></td>"
            f"<td>{html.escape(row['name'])}</td><td class='ember-pg-state'>{html.escape(str(row['state']))}</td>"
            f"<td>{html.escape(str(row['strategy']))}</td><td>{bundles}</td></tr>"
        )
    heads = ["group", "name", "state", "strategy", "bundles"]
    return view("placement-groups", "<b>Placement groups</b>" + table(heads, cells, "none"))


def jobs_html(jobs: list, selected: dict | None) -> str:
    """Every job with its status and a stop button while it runs; the selected one's logs below."""
    cells = []
    for job in reversed(jobs):
        sid = html.escape(job["submission_id"])
        stop = (
            f"<button class='ember-stop' data-stop='{sid}'>Stop</button>"
            if job["status"] in ("PENDING", "RUNNING")
            else ""
        )
        cells.append(
            f"<tr class='ember-job'><td><a href='jobs?job={sid}'>{sid}</a></td>"
            f"<td class='ember-job-status'>{html.escape(job['status'])}</td>"
            f"<td><code>{html.escape(job['entrypoint'][:100])}</code></td>"
            f"<td>{html.escape(str(job.get('message') or '')[:100])}</td><td>{stop}</td></tr>"
        )
    body = "<b>Jobs</b>" + table(["job", "status", "entrypoint", "message", ""], cells, "none submitted")
    if selected is not None:
        body += (
            f"<b>Logs of <code class='ember-logs-of'>{html.escape(selected['submission_id'])}</code></b>"
            f"<pre class='ember-logs ember-job-logs'>{html.escape(selected['logs'])}</pre>"
        )
    return view("jobs", body)


def logs_html(files: list, selected: dict | None, nodes: list = ()) -> str:
    """Each alive node's own files as its node manager lists them, then the head machine's other
    session log files (dashboard, start-up, runtime envs, nodes gone); the selected one's tail."""
    body = ""
    for node in nodes:
        node_id = html.escape(node["node_id"])
        error = f" <span class='ember-note'>{html.escape(node['error'])}</span>" if node.get("error") else ""
        body += (
            f"<div class='ember-node-logs' data-node='{node_id}'><b>Node <code>{node_id[:12]}</code></b> "
            f"<span class='ember-note'>{html.escape(node['address'])}</span>{error}"
            + _log_table(node["files"], node["node_id"])
            + "</div>"
        )
    body += "<b>Other log files</b> <span class='ember-note'>(this machine's session directory)</span>"
    body += _log_table(files)
    if selected is not None:
        where = f" on node {selected['node_id'][:12]}" if selected.get("node_id") else ""
        body += (
            f"<b>{html.escape(selected['name'])}</b>{html.escape(where)} <span class='ember-note'>(last "
            f"{fmt_bytes(len(selected['text']))})</span><pre class='ember-logs ember-log-text'>"
            f"{html.escape(selected['text'])}</pre>"
        )
    return view("logs", body)


def _log_table(files: list, node_id: str | None = None) -> str:
    query = f"node={quote(node_id)}&" if node_id else ""
    cells = []
    for f in files:
        exited = " <span class='ember-note'>(exited)</span>" if f.get("alive") is False else ""
        cells.append(
            f"<tr class='ember-log-file'><td><a href='logs?{html.escape(query)}file={quote(f['name'])}'>"
            f"{html.escape(f['name'])}</a></td><td>{html.escape(f['kind'])}</td>"
            f"<td class='ember-num'>{f.get('pid') or ''}{exited}</td>"
            f"<td class='ember-num'>{fmt_bytes(f['size'])}</td></tr>"
        )
    return table(["file", "of", "pid", "size"], cells, "none", ("pid", "size"))


def store_totals(state) -> dict:
    """Object store use summed over the live nodes."""
    used = capacity = spilled = objects = 0
    for node in alive_nodes(state):
        store = node.get("store") or {}
        used += store.get("used", 0)
        capacity += store.get("capacity", 0)
        spilled += store.get("spilled", 0)
        objects += store.get("num_objects", 0)
    return {
        "used": used,
        "capacity": capacity,
        "spilled": spilled,
        "num_objects": objects,
        "text": fmt_byte_pair(used, capacity),
    }
