"""HTML for the cluster, object store and GPU views: plain functions of a ``ClusterState``.

Kept apart from ipywidgets so what a widget shows is tested as text. Numbers carry a class name
(``ember-count-finished``, ``ember-cpu``, ...) so tests and the browser check read them back.
"""

import html

from ember.widgets.state import STATES

BAR_COLOURS = {"cpu": "#3b82f6", "gpu": "#a855f7", "memory": "#f59e0b", "store": "#14b8a6"}


def fmt_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value}"


def bar(kind: str, used: float, total: float, text: str) -> str:
    share = 0 if not total else max(0.0, min(1.0, used / total))
    return (
        f"<div class='ember-bar ember-{kind}' title='{html.escape(text)}' "
        "style='display:flex;align-items:center;gap:6px'>"
        f"<div style='background:#e5e7eb;width:110px;height:10px;border-radius:3px;overflow:hidden'>"
        f"<div style='width:{share * 100:.0f}%;height:100%;background:{BAR_COLOURS[kind]}'></div></div>"
        f"<span class='ember-{kind}-text'>{html.escape(text)}</span></div>"
    )


def task_counts(state) -> str:
    summary = state.summary()
    return " · ".join(f"<span class='ember-count-{s}'>{summary[s]}</span> {s}" for s in STATES)


def cluster_html(state, address: str | None = None, compact: bool = False) -> str:
    """Nodes with CPU/GPU/memory/object store bars and workers; pending demand; task counts."""
    workers = state.workers()
    rows = []
    alive = [node for node in state.nodes.values() if node.get("alive", True)]
    for node in sorted(alive, key=lambda n: n["node_id"]):
        resources = node.get("resources") or {}
        available = node.get("available") or {}
        store = node.get("store") or {}
        cells = [f"<td><code>{html.escape(node['node_id'][:8])}</code></td>"]
        cpu = resources.get("CPU", 0)
        cells.append(f"<td>{bar('cpu', cpu - available.get('CPU', 0), cpu, _used('CPU', cpu, available))}</td>")
        gpu = resources.get("GPU", 0)
        cells.append(f"<td>{bar('gpu', gpu - available.get('GPU', 0), gpu, _used('GPU', gpu, available))}</td>")
        if not compact:
            memory = resources.get("memory", 0)
            used_memory = memory - available.get("memory", memory)
            cells.append(
                f"<td>{bar('memory', used_memory, memory, f'{fmt_bytes(used_memory)} / {fmt_bytes(memory)}')}</td>"
            )
        capacity, used = store.get("capacity", 0), store.get("used", 0)
        cells.append(f"<td>{bar('store', used, capacity, f'{fmt_bytes(used)} / {fmt_bytes(capacity)}')}</td>")
        cells.append(f"<td class='ember-workers'>{workers.get(node['node_id'], 0)}</td>")
        rows.append(f"<tr class='ember-node'>{''.join(cells)}</tr>")
    heads = ["node", "CPU", "GPU"] + ([] if compact else ["memory"]) + ["object store", "workers"]
    header = "".join(f"<th style='text-align:left'>{h}</th>" for h in heads)
    where = f" at <code class='ember-address'>{html.escape(address)}</code>" if address else ""
    return (
        f"<div class='ember-cluster'><b>Ember cluster</b>{where}: "
        f"<span class='ember-node-count'>{len(alive)}</span> node(s), "
        f"pending demand <span class='ember-pending'>{state.summary()['pending']}</span> task(s)"
        f"<br>tasks: {task_counts(state)}"
        f"<table style='border-collapse:collapse'><tr>{header}</tr>{''.join(rows)}</table></div>"
    )


def _used(name: str, total: float, available: dict) -> str:
    return f"{total - available.get(name, 0):g} / {total:g} {name}"


def store_html(state) -> str:
    """Per node used / capacity / spilled, and the largest objects with what made them and their size."""
    rows, objects = [], []
    for node in sorted(state.nodes.values(), key=lambda n: n["node_id"]):
        store = node.get("store") or {}
        capacity, used = store.get("capacity", 0), store.get("used", 0)
        rows.append(
            f"<tr class='ember-store-node'><td><code>{html.escape(node['node_id'][:8])}</code></td>"
            f"<td>{bar('store', used, capacity, f'{fmt_bytes(used)} / {fmt_bytes(capacity)}')}</td>"
            f"<td class='ember-objects'>{store.get('num_objects', 0)}</td>"
            f"<td class='ember-spilled'>{fmt_bytes(store.get('spilled', 0))} ({store.get('num_spilled', 0)})</td></tr>"
        )
        for oid, size in store.get("largest") or []:
            objects.append((size, oid, node["node_id"]))
    objects.sort(key=lambda item: item[0], reverse=True)
    object_rows = "".join(
        f"<tr class='ember-object'><td><code>{oid.hex()[:12]}</code></td><td>{html.escape(state.creator_of(oid))}</td>"
        f"<td><code>{node_id[:8]}</code></td><td class='ember-object-size'>{fmt_bytes(size)}</td></tr>"
        for size, oid, node_id in objects[:10]
    )
    return (
        "<div class='ember-store'><b>Object store</b><table><tr><th>node</th><th>used / capacity</th>"
        f"<th>objects</th><th>spilled</th></tr>{''.join(rows)}</table>"
        "<b>Largest objects</b><table><tr><th>object</th><th>made by</th><th>node</th><th>size</th></tr>"
        f"{object_rows or '<tr><td colspan=4>none in shared memory</td></tr>'}</table></div>"
    )


def gpus_html(state) -> str:
    """Per node and GPU id: which task or actor holds it, and what share."""
    rows = []
    for node in sorted(state.nodes.values(), key=lambda n: n["node_id"]):
        gpus = node.get("gpus")
        total = (node.get("resources") or {}).get("GPU", 0)
        if gpus is None:  # nodes that do not report per-GPU assignments: the totals only
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
                f"<td>{float(gpu.get('share') or 0):.2f}</td></tr>"
            )
    return (
        "<div class='ember-gpus'><b>GPUs</b><table><tr><th>node</th><th>GPU</th><th>held by</th><th>share</th></tr>"
        f"{''.join(rows) or '<tr><td colspan=4>no nodes</td></tr>'}</table></div>"
    )


def actors_html(state) -> str:
    rows = "".join(
        f"<tr><td><code>{actor_id[:12]}</code></td><td>{html.escape(str(a.get('class_name')))}</td>"
        f"<td>{html.escape(str(a.get('name') or ''))}</td><td class='ember-actor-state'>{a.get('state')}</td></tr>"
        for actor_id, a in state.actors.items()
    )
    return f"<div class='ember-actors'><b>Actors</b><table>{rows or '<tr><td>none</td></tr>'}</table></div>"
