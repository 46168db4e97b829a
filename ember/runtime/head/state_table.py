"""The head's answers to the state API (``ember.util.state``, ``ember.timeline``).

Tasks are known to their owners only; the head sees them through the task events the owners
send to its event hub (``TASK_EVENTS``). :class:`TaskTable` folds those events into one record per
task, bounded: it keeps the most recent ``capacity`` tasks (``EMBER_TASK_TABLE_SIZE``, 10,000 by
default), so a long-running cluster's head does not grow with every task it ever saw. A plain class,
tested without sockets.

:class:`StateQueries` is a mixin of the head that serves ``STATE_QUERY`` from that table and from the
head's own actor and job tables.
"""

import os
from collections import OrderedDict

import msgpack

DEFAULT_CAPACITY = 10_000

# Ray's TaskStatus names for the states an owner reports. Ember does not tell "waiting for its
# arguments" from "waiting for a worker": both are PENDING_NODE_ASSIGNMENT.
TASK_STATES = {
    "submitted": "PENDING_NODE_ASSIGNMENT",
    "running": "RUNNING",
    "finished": "FINISHED",
    "failed": "FAILED",
}
_COPIED = ("name", "parent", "actor", "job", "node", "worker", "pid", "error")


class TaskTable:
    """The most recent tasks, as the task events tell them. ``rows()`` lists them oldest first."""

    def __init__(self, capacity: int | None = None):
        if capacity is None:
            capacity = int(os.environ.get("EMBER_TASK_TABLE_SIZE", DEFAULT_CAPACITY))
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"The task table's capacity must be a positive int, got {capacity!r}.")
        self.capacity = capacity
        self.tasks: OrderedDict = OrderedDict()
        self.dropped = 0  # tasks forgotten to stay within capacity

    def apply_batch(self, payload: bytes) -> None:
        """One ``TASK_EVENTS`` payload: a msgpack list of [kind, task id, time, fields]."""
        for kind, task_id, when, fields in msgpack.unpackb(payload, raw=False):
            self.apply(kind, task_id, when, fields or {})

    def apply(self, kind: str, task_id: bytes, when: float, fields: dict) -> None:
        state = TASK_STATES.get(kind)
        if state is None:
            return
        record = self.tasks.get(task_id)
        if record is None:
            record = self.tasks[task_id] = {"task_id": task_id, "name": "", "state": state}
            if len(self.tasks) > self.capacity:
                self.tasks.popitem(last=False)
                self.dropped += 1
        # An owner folds the states a task went through within one batch into its latest one, with
        # the times of the earlier ones.
        for earlier, at in (fields.get("times") or {}).items():
            record[earlier] = at
        record[kind] = when
        if kind == "running":  # a retry runs again: the earlier attempt's end does not apply
            record.pop("finished", None)
            record.pop("failed", None)
        for key in _COPIED:
            if key in fields:
                record[key] = fields[key]
        record["state"] = state

    def rows(self) -> list:
        return list(self.tasks.values())


class StateQueries:
    """Mixin of the head: ``STATE_QUERY`` for ``kind`` "tasks", "actors" or "jobs"."""

    def on_state_query(self, identity, header, frames):
        kind = header.get("kind")
        if kind == "tasks":
            return {"rows": self.task_table.rows(), "dropped": self.task_table.dropped}
        if kind == "actors":
            return {"rows": [_actor_row(actor) for actor in self.actors.values()]}
        if kind == "jobs":
            return {"rows": list(self.jobs.values())}
        raise ValueError(f"unknown state query {kind!r}")


def _actor_row(actor) -> dict:
    spec = actor.spec
    row = actor.public()
    row.pop("meta", None)
    row.update(
        job_id=actor.job_id,
        is_detached=bool(spec.get("detached")),
        required_resources=spec.get("resources") or {},
        placement_group_id=(spec.get("pg") or [None])[0],
        max_restarts=spec.get("max_restarts", 0),
    )
    return row
