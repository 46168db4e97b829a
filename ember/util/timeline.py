"""``ember.timeline()``: the tasks that ran, as a Chrome trace (what ``ray.timeline()`` writes)."""


def timeline(filename: str | None = None):
    """The tasks that ran, as Chrome trace events (``chrome://tracing``, Perfetto): one complete
    event (``"ph": "X"``) per task that started and ended, ``ts`` and ``dur`` in microseconds,
    ``pid`` the node, ``tid`` the worker process. Writes them as JSON to ``filename`` if given (and
    returns None), else returns the list. Covers the tasks in the head's recent-task table."""
    from ember.util.state import _hex, _query  # its dataclasses cost every process 7 ms at import

    events = []
    for row in _query("tasks"):
        start, end = row.get("running"), row.get("finished", row.get("failed"))
        if start is None or end is None:
            continue
        node = _hex(row.get("node")) or "unknown"
        events.append(
            {
                "cat": "actor_task" if row.get("actor") else "task",
                "name": row.get("name") or "task",
                "pid": f"Node {node[:12]}",
                "tid": f"Worker {row.get('pid')}",
                "ph": "X",
                "ts": start * 1e6,
                "dur": max(0.0, end - start) * 1e6,
                "args": {
                    "task_id": _hex(row["task_id"]),
                    "job_id": _hex(row.get("job")),
                    "actor_id": _hex(row.get("actor")),
                    "state": row["state"],
                    "error": row.get("error"),
                },
            }
        )
    if filename is None:
        return events
    import json

    with open(filename, "w") as f:
        json.dump(events, f)
    return None
