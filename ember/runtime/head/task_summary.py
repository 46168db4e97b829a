"""The head's running summary of every task it hears of, published for the widgets and the dashboard.

    owners --TASK_EVENTS--> head --events--> TaskSummary.apply --> ClusterState (bounded records,
                                                                   exact aggregates)
    head.tick --> TaskSummary.due(now) --> one ``event:summary`` message, at most every
                                          SUMMARY_PERIOD seconds and only when it would differ

A kernel showing the dashboard then decodes ten small messages a second, whatever the task rate,
instead of every task's events under its own GIL (that cost a busy driver about a tenth of its
throughput: benchmarks/dashboard_overhead.py). A plain object: no sockets.
"""

import time

from ember.runtime.cluster_state import ClusterState

SUMMARY_PERIOD = 0.1  # seconds between summaries, at most (the widgets redraw at most ten times a second)
RECORDS = 2_000  # task records kept to link dependencies and name objects' makers (aggregates stay exact)


class TaskSummary:
    """Folds task events; says when a summary is due and gives it."""

    def __init__(self, records: int = RECORDS):
        self.state = ClusterState(max_tasks=records)
        self._sent_version = -1
        self._sent_running = 0
        self._sent_at = 0.0

    def apply(self, events: list) -> None:
        """Well-formed ``[kind, task id, time, fields]`` events, as the head's task table checked them."""
        self.state.apply(b"event:task", events)

    def job_finished(self, job_id: bytes) -> None:
        """The job's tasks that had not ended count as failed (see ``ClusterState.end_job``)."""
        self.state.end_job(job_id, time.time())

    def due(self, now: float, objects=()) -> dict | None:
        """The summary to publish at monotonic ``now``, or None when it is too soon or nothing changed.
        A summary also goes out while the last one said tasks were running, so that the figure falls
        back to zero once they stopped (it is a moving window, not a count of events)."""
        if now - self._sent_at < SUMMARY_PERIOD:
            return None
        state = self.state
        if state.version == self._sent_version and not self._sent_running:
            return None
        message = state.summary_message(time.time(), objects)
        self._sent_version, self._sent_running, self._sent_at = state.version, message["running"], now
        return message
