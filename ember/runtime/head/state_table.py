"""The head's answers to the state API (``ember.util.state``, ``ember.timeline``).

Tasks are known to their owners only; the head sees them through the task events the owners send it
(``TASK_EVENTS``), folded once by its :class:`~ember.runtime.head.task_summary.TaskSummary`, which
keeps the most recent tasks' records. :class:`StateQueries`, an object the head owns, serves
``STATE_QUERY`` from those and from the head's actor and job tables.
"""

import time

FAILURES = 10  # failed tasks the dashboard lists


class StateQueries:
    """``STATE_QUERY`` for ``kind`` "tasks", "actors", "jobs", "summary" or "activity", from the tables it is given:
    the task summary (its rows, and the summary ``event:summary`` carries), a function listing the actor
    rows (the actor directory's) and the head's job table."""

    def __init__(self, task_summary, actor_rows, jobs: dict):
        self.task_summary = task_summary
        self.actor_rows = actor_rows
        self.jobs = jobs

    def on_state_query(self, identity, msg, frames):
        if msg.kind == "tasks":
            return {"rows": self.task_summary.rows(), "dropped": self.task_summary.dropped}
        if msg.kind == "actors":
            return {"rows": self.actor_rows()}
        if msg.kind == "jobs":
            return {"rows": list(self.jobs.values())}
        if msg.kind == "activity":
            return self.task_summary.activity(time.time(), msg.limit or 0, FAILURES)
        if msg.kind == "summary":
            return {"summary": self.task_summary.state.summary_message()}
        raise ValueError(f"unknown state query {msg.kind!r}")
