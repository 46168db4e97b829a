"""``%ember status``: one short text summary of the cluster and this kernel's tasks."""

import ember
from ember import api
from ember.dashboard import link
from ember.widgets import events
from ember.widgets.render import fmt_bytes


def status_text(address: str | None, started_here: bool) -> str:
    """Address, nodes, resources used/total, object store use, and task counts from the event feed."""
    nodes = [n for n in ember.nodes() if n["Alive"]]
    total = ember.cluster_resources()
    available = ember.available_resources()
    lines = [f"Ember cluster at {address}" + (" (started by this kernel)" if started_here else "")]
    context = api._context
    dashboard = link(context.dashboard_url if context is not None else None)
    if dashboard:
        lines.append(f"dashboard: {dashboard}")
    lines.append(f"nodes: {len(nodes)}")
    for name in sorted(total):
        if name in ("memory", "object_store_memory"):
            continue
        lines.append(f"{name}: {total[name] - available.get(name, 0):g} of {total[name]:g} in use")
    used = sum((n.get("ObjectStore") or {}).get("used", 0) for n in nodes)
    capacity = sum((n.get("ObjectStore") or {}).get("capacity", 0) for n in nodes)
    lines.append(f"object store: {fmt_bytes(used)} of {fmt_bytes(capacity)}")
    feed = events.feed()
    feed.refresh()
    with feed.lock:
        counts = feed.state.summary()
    lines.append("tasks: " + ", ".join(f"{counts[s]} {s}" for s in counts))
    return "\n".join(lines)
