"""HTML for the cluster, object store, GPU and actor views: plain functions of a ``ClusterState``.

Kept apart from ipywidgets so what a widget shows is tested as text, and so a web page can show
the same views. Numbers carry a class name (``ember-count-finished``, ``ember-cpu-text``, ...) so
tests and the browser check read them back.

Styling follows JupyterLab's theme through its CSS variables (with fallbacks for nbviewer and
plain pages), so the views read in light and dark themes alike. Tables never wrap a cell, numbers
are tabular (a changing digit does not move its column), and wide tables scroll sideways rather
than lose columns in a narrow notebook.
"""

import html

from ember.runtime.cluster_state import STATES

RESERVED_HELP = "the scheduler's logical 'memory' resource: what tasks and actors reserved with memory=, not RAM in use"
POOLED_HELP = (
    "freed objects' shared-memory files kept a few seconds for new objects to reuse (their pages are "
    "already allocated): counted against the capacity, and the first to go when room is needed"
)
BAR_COLOURS = {"cpu": "#3b82f6", "gpu": "#a855f7", "memory": "#f59e0b", "ram": "#0ea5e9", "store": "#14b8a6"}
# RAM and the object store turn orange, then red, as they fill (as Dask's memory bars do): red is the
# colour of failed tasks, and a bar red at 13% read as trouble.
PRESSURE = ((0.95, "#ef4444"), (0.8, "#f97316"))

STYLE = """<style>
.ember-view{font-family:var(--jp-ui-font-family,system-ui,sans-serif);font-size:var(--jp-ui-font-size1,13px);
color:var(--jp-ui-font-color1,#1f2937);line-height:1.5}
.ember-view .ember-scroll{overflow-x:auto;max-width:100%}
.ember-view table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin:4px 0}
.ember-view th{text-align:left;font-weight:600;white-space:nowrap;padding:2px 12px 2px 0;
border-bottom:1px solid var(--jp-border-color2,#d1d5db);color:var(--jp-ui-font-color2,#4b5563)}
.ember-view td{white-space:nowrap;padding:3px 12px 3px 0;vertical-align:top}
.ember-view td.ember-num,.ember-view th.ember-num{text-align:right}
.ember-view .ember-bar{display:flex;flex-direction:column;gap:2px;min-width:96px}
.ember-view .ember-track{height:8px;border-radius:3px;overflow:hidden;
background:var(--jp-layout-color3,#e5e7eb);box-shadow:inset 0 0 0 1px var(--jp-border-color1,#9ca3af)}
.ember-view .ember-fill{height:100%}
.ember-view .ember-note,.ember-view .ember-sub{color:var(--jp-ui-font-color2,#6b7280)}
.ember-view .ember-sub{display:block;font-size:var(--jp-ui-font-size0,11px)}
.ember-view code{font-family:var(--jp-code-font-family,monospace);background:none}
.ember-view .ember-disconnected{color:var(--jp-warn-color1,#b45309);font-weight:600}
</style>"""


def fmt_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value}"


def view(kind: str, body: str) -> str:
    """One view's HTML, styled by ``STYLE`` (scoped to ``.ember-view``), which a widget sends once
    beside its views and a snapshot carries once: not again with every redraw."""
    return f"<div class='ember-view ember-{kind}'>{body}</div>"


def table(heads: list, rows: list, empty: str, numeric: tuple = ()) -> str:
    """A table that scrolls sideways when narrow; ``numeric`` names the right-aligned columns."""
    header = "".join(f"<th class='ember-num'>{h}</th>" if h in numeric else f"<th>{h}</th>" for h in heads)
    body = "".join(rows) or f"<tr><td colspan={len(heads)} class='ember-note'>{empty}</td></tr>"
    return f"<div class='ember-scroll'><table><tr>{header}</tr>{body}</table></div>"


def fmt_byte_pair(used: float, total: float) -> str:
    """``used / total`` in the total's unit: "1.5 / 23.5 GiB" (narrower than each with its own)."""
    unit, scale = "B", 1
    for name in ("KiB", "MiB", "GiB", "TiB"):
        if total >= 1024 * scale:
            unit, scale = name, scale * 1024
    if unit == "B":
        return f"{used:.0f} / {total:.0f} B"
    return f"{used / scale:.1f} / {total / scale:.1f} {unit}"


def bar(kind: str, used: float, total: float, text: str, sub: str = "") -> str:
    """A labelled bar: the text above, the bar below (a column stays narrow), ``sub`` under both."""
    share = 0 if not total else max(0.0, min(1.0, used / total))
    colour = BAR_COLOURS[kind]
    if kind in ("ram", "store"):
        colour = next((c for level, c in PRESSURE if share >= level), colour)
    return (
        f"<div class='ember-bar ember-{kind}' title='{html.escape(text)}'>"
        f"<span class='ember-bar-text ember-{kind}-text'>{html.escape(text)}</span>"
        f"<div class='ember-track'><div class='ember-fill' style='width:{share * 100:.0f}%;"
        f"background:{colour}'></div></div>{sub}</div>"
    )


def task_counts(state) -> str:
    summary = {**state.summary(), "running": state.running_now()}  # short tasks' runs are reported folded
    return " · ".join(f"<span class='ember-count-{s}'>{summary[s]}</span> {s}" for s in STATES)


def has_gpus(state) -> bool:
    return any((node.get("resources") or {}).get("GPU", 0) for node in state.nodes.values())


def cluster_html(state, address: str | None = None, compact: bool = False, dashboard: str | None = None) -> str:
    """Nodes with CPU/GPU/memory/RAM/object store bars and workers; pending demand; task counts.
    The GPU column shows only when some node has GPUs; ``dashboard``: the web dashboard's URL, linked."""
    workers = state.workers()
    gpus = has_gpus(state)
    rows = []
    alive = [node for node in state.nodes.values() if node.get("alive", True)]
    for node in sorted(alive, key=lambda n: n["node_id"]):
        resources = node.get("resources") or {}
        available = node.get("available") or {}
        store = node.get("store") or {}
        cells = [f"<td><code>{html.escape(node['node_id'][:8])}</code></td>"]
        cpu = resources.get("CPU", 0)
        cells.append(f"<td>{bar('cpu', cpu - available.get('CPU', 0), cpu, _used('CPU', cpu, available))}</td>")
        if gpus:
            gpu = resources.get("GPU", 0)
            cells.append(f"<td>{bar('gpu', gpu - available.get('GPU', 0), gpu, _used('GPU', gpu, available))}</td>")
        if not compact:
            # RAM in use, and under it the scheduler's logical "memory" resource (what tasks reserved
            # with memory=): shown as RAM, that one read as memory in use when it is not.
            memory = resources.get("memory", 0)
            reserved = memory - available.get("memory", memory)
            sub = (
                f"<span class='ember-sub ember-reserved' title=\"{RESERVED_HELP}\">"
                f"reserved {fmt_byte_pair(reserved, memory)}</span>"
            )
            ram = node.get("ram")
            if ram:
                cells.append(f"<td>{bar('ram', ram[0], ram[1], fmt_byte_pair(*ram), sub)}</td>")
            else:
                cells.append(f"<td><span class='ember-note'>not reported</span>{sub}</td>")
        capacity, used = store.get("capacity", 0), store.get("used", 0)
        cells.append(f"<td>{bar('store', used, capacity, fmt_byte_pair(used, capacity))}</td>")
        states = _workers_text(node.get("workers"), workers.get(node["node_id"], 0))
        cells.append(f"<td class='ember-workers'>{states}</td>")
        rows.append(f"<tr class='ember-node'>{''.join(cells)}</tr>")
    heads = ["node", "CPU"] + (["GPU"] if gpus else [])
    if not compact:
        heads.append("RAM in use")
    heads += ["object store", "workers"]
    where = f" at <code class='ember-address'>{html.escape(address)}</code>" if address else ""
    if dashboard:
        link = html.escape(dashboard, quote=True)
        where += f" · <a class='ember-dashboard-link' href='{link}' target='_blank' rel='noopener'>dashboard</a>"
    return view(
        "cluster",
        f"<b>Ember cluster</b>{where}: <span class='ember-node-count'>{len(alive)}</span> node(s), "
        f"<span class='ember-pending'>{state.summary()['pending']}</span> task(s) pending"
        f"<br>tasks: {task_counts(state)}" + table(heads, rows, "no nodes yet") + demand_html(alive),
    )


def waiting_demand(nodes: list) -> list:
    """What the node managers wait to grant, by resource shape: ``[(shape, count, infeasible)]``,
    infeasible when no node of the cluster has that much in total (it waits for a node to join)."""
    counts: dict = {}
    for node in nodes:
        for shape in node.get("demand") or ():
            key = tuple(sorted((name, amount) for name, amount in shape.items() if amount))
            counts[key] = counts.get(key, 0) + 1
    totals = [node.get("total") or node.get("resources") or {} for node in nodes]
    return [
        (dict(key), count, not any(all(total.get(name, 0) >= amount for name, amount in key) for total in totals))
        for key, count in sorted(counts.items(), key=lambda item: -item[1])
    ]


def demand_html(nodes: list) -> str:
    """The resource requests waiting on the nodes, each with why it waits."""
    rows = []
    for shape, count, infeasible in waiting_demand(nodes):
        what = ", ".join(f"{name}: {amount:g}" for name, amount in shape.items()) or "nothing"
        why = (
            "<span class='ember-infeasible'>infeasible: no node has that much; waits for one to join</span>"
            if infeasible
            else "waiting for resources in use"
        )
        cells = f"<td class='ember-num'>{count}×</td><td>{{{what}}}</td><td>{why}</td>"
        rows.append(f"<tr class='ember-demand'>{cells}</tr>")
    if not rows:
        return ""
    return "<b>Waiting for resources</b>" + table(["requests", "each needs", "why"], rows, "", ("requests",))


def _workers_text(states: dict | None, seen: int) -> str:
    """The node's workers by state, one per line (``2 busy``, ``1 idle``, ``1 actor``), from its report;
    without one, how many processes were seen running tasks there."""
    if not states:
        return str(seen)
    parts = [f"<div><span class='ember-workers-{state}'>{n}</span> {state}</div>" for state, n in states.items() if n]
    return "".join(parts) or "none"


def _used(name: str, total: float, available: dict) -> str:
    return f"{total - available.get(name, 0):g} / {total:g} {name}"


def store_html(state) -> str:
    """Per node used / capacity / spilled, and the largest objects with what made them and their size."""
    rows, objects = [], []
    for node in sorted(state.nodes.values(), key=lambda n: n["node_id"]):
        store = node.get("store") or {}
        capacity, used = store.get("capacity", 0), store.get("used", 0)
        pooled = store.get("pooled", 0)
        sub = (
            f"<span class='ember-sub ember-pooled' title=\"{POOLED_HELP}\">pooled {fmt_bytes(pooled)}</span>"
            if pooled
            else ""
        )
        rows.append(
            f"<tr class='ember-store-node'><td><code>{html.escape(node['node_id'][:8])}</code></td>"
            f"<td>{bar('store', used, capacity, fmt_byte_pair(used, capacity), sub)}</td>"
            f"<td class='ember-objects ember-num'>{store.get('num_objects', 0)}</td>"
            f"<td class='ember-spilled ember-num'>{fmt_bytes(store.get('spilled', 0))} "
            f"({store.get('num_spilled', 0)})</td></tr>"
        )
        for oid, size in store.get("largest") or []:
            objects.append((size, oid, node["node_id"]))
    objects.sort(key=lambda item: item[0], reverse=True)
    object_rows = [
        f"<tr class='ember-object'><td><code>{oid.hex()[:12]}</code></td><td>{html.escape(state.creator_of(oid))}</td>"
        f"<td><code>{node_id[:8]}</code></td><td class='ember-object-size ember-num'>{fmt_bytes(size)}</td></tr>"
        for size, oid, node_id in objects[:10]
    ]
    return view(
        "store",
        "<b>Object store</b>"
        + table(["node", "used / capacity", "objects", "spilled"], rows, "no nodes yet", ("objects", "spilled"))
        + "<b>Largest objects</b>"
        + table(["object", "made by", "node", "size"], object_rows, "none in shared memory", ("size",)),
    )


def gpus_html(state) -> str:
    """Per node and GPU id: which task or actor holds it, and what share; says so when there are none."""
    if not has_gpus(state):
        nodes = sum(1 for node in state.nodes.values() if node.get("alive", True))
        note = f"No GPUs in this cluster ({nodes} node(s))."
        return view("gpus", f"<b>GPUs</b><p class='ember-note ember-no-gpus'>{note}</p>")
    rows = []
    for node in sorted(state.nodes.values(), key=lambda n: n["node_id"]):
        total = (node.get("resources") or {}).get("GPU", 0)
        if not total:
            continue
        gpus = node.get("gpus")
        if not gpus:  # nodes that report no per-GPU assignment: the totals only
            free = (node.get("available") or {}).get("GPU", 0)
            rows.append(
                f"<tr class='ember-gpu-node'><td><code>{node['node_id'][:8]}</code></td><td>all</td>"
                f"<td>{total - free:g} of {total:g} held</td><td></td></tr>"
            )
            continue
        for gpu in gpus:
            holder = gpu.get("holder")
            if isinstance(holder, bytes):
                holder = holder.hex()[:12]
            rows.append(
                f"<tr class='ember-gpu'><td><code>{node['node_id'][:8]}</code></td>"
                f"<td>{html.escape(str(gpu.get('gpu_id')))}</td>"
                f"<td class='ember-gpu-holder'>{html.escape(str(holder or 'free'))}</td>"
                f"<td class='ember-num'>{float(gpu.get('share') or 0):.2f}</td></tr>"
            )
    return view("gpus", "<b>GPUs</b>" + table(["node", "GPU", "held by", "share"], rows, "none", ("share",)))


def actors_html(state) -> str:
    """Actors with their class, name, state, process, node, restarts and calls seen."""
    rows = []
    for actor_id, actor in state.actors.items():
        node = actor.get("node_id") or ""
        rows.append(
            f"<tr class='ember-actor'><td><code>{actor_id[:12]}</code></td>"
            f"<td>{html.escape(str(actor.get('class_name') or ''))}</td>"
            f"<td>{html.escape(str(actor.get('name') or ''))}</td>"
            f"<td class='ember-actor-state'>{html.escape(str(actor.get('state')))}</td>"
            f"<td class='ember-num'>{actor.get('pid') or ''}</td><td><code>{html.escape(str(node)[:8])}</code></td>"
            f"<td class='ember-num'>{actor.get('num_restarts') or 0}</td>"
            f"<td class='ember-actor-calls ember-num'>{state.actor_calls.get(actor_id, 0)}</td></tr>"
        )
    heads = ["actor", "class", "name", "state", "pid", "node", "restarts", "calls"]
    return view("actors", "<b>Actors</b>" + table(heads, rows, "none", ("pid", "restarts", "calls")))


def disconnected_html(why: str) -> str:
    """The banner a view shows once its cluster is gone: its numbers are the last ones known."""
    return view(
        "banner",
        f"<span class='ember-disconnected'>Disconnected: {html.escape(why)}.</span> "
        "<span class='ember-note'>The numbers below are the last ones received.</span>",
    )
