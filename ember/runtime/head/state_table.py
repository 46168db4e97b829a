"""The head's answers to the state API (``ember.util.state``, ``ember.timeline``).

Tasks are known to their owners only; the head sees them through the task events the owners
send to its event hub (``TASK_EVENTS``). :class:`TaskTable` folds those events into one record per
task, bounded: it keeps the most recent ``capacity`` tasks (``EMBER_TASK_TABLE_SIZE``, 10,000 by
default), so a long-running cluster's head does not grow with every task it ever saw. A plain class,
tested without sockets.

:class:`StateQueries`, an object the head owns, serves ``STATE_QUERY`` from that table and from the
head's actor and job tables.
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

    def apply_batch(self, payload: bytes) -> list:
        """One ``TASK_EVENTS`` payload: a msgpack list of [kind, task id, time, fields]. Events of any
        other shape are skipped (a sender's bug must not put junk in the table); ValueError when the
        payload is not such a list at all. Returns the events applied (the head's summary takes them)."""
        try:
            events = msgpack.unpackb(payload, raw=False)
        except Exception as error:
            raise ValueError(f"task events must be a msgpack list: {error}") from None
        if not isinstance(events, list):
            raise ValueError("task events must be a msgpack list")
        applied = []
        for event in events:
            if _well_formed(event):
                kind, task_id, when, fields = event
                self.apply(kind, task_id, when, fields or {})
                applied.append(event)
        return applied

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


def _well_formed(event) -> bool:
    if not (isinstance(event, list) and len(event) == 4):
        return False
    kind, task_id, when, fields = event
    return (
        isinstance(kind, str)
        and isinstance(task_id, bytes)
        and isinstance(when, (int, float))
        and not isinstance(when, bool)
        and (fields is None or isinstance(fields, dict))
        and isinstance((fields or {}).get("times") or {}, dict)
    )


class StateQueries:
    """``STATE_QUERY`` for ``kind`` "tasks", "actors", "jobs" or "summary", from the tables it is given:
    the task table, a function listing the actor rows (the actor directory's), the head's job table and
    a function giving the task summary now (what ``event:summary`` carries)."""

    def __init__(self, task_table: TaskTable, actor_rows, jobs: dict, summary=None):
        self.task_table = task_table
        self.actor_rows = actor_rows
        self.jobs = jobs
        self.summary = summary

    def on_state_query(self, identity, msg, frames):
        if msg.kind == "tasks":
            return {"rows": self.task_table.rows(), "dropped": self.task_table.dropped}
        if msg.kind == "actors":
            return {"rows": self.actor_rows()}
        if msg.kind == "jobs":
            return {"rows": list(self.jobs.values())}
        if msg.kind == "summary" and self.summary is not None:
            return {"summary": self.summary()}
        raise ValueError(f"unknown state query {msg.kind!r}")
