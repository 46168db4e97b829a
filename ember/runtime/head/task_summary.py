"""The head's one fold of every task event it hears of: the state API's recent tasks and the summary
published for the widgets and the dashboard.

    owners --TASK_EVENTS--> head --apply_batch--> ClusterState (the most recent tasks' records,
                                                  exact aggregates over all of them)
                               +--ended tasks--> TaskActivity (per-worker time slots)
    STATE_QUERY "tasks"  <-- rows()    (``ember.util.state.list_tasks``, ``ember.timeline``)
    STATE_QUERY "activity" <-- activity()  (the dashboard's task stream, workers, recent tasks)
    head.tick --> due(now) --> one ``event:summary`` message, at most every SUMMARY_PERIOD
                               seconds and only when it would differ

A kernel showing the dashboard then decodes ten small messages a second, whatever the task rate,
instead of every task's events under its own GIL (that cost a busy driver about a tenth of its
throughput: benchmarks/dashboard_overhead.py). Records are bounded (``EMBER_TASK_TABLE_SIZE``,
10,000 by default), so a long-running head does not grow with every task it ever saw. A plain
object: no sockets.
"""

import itertools
import os
import time

import msgpack

from ember.runtime.cluster_state import FAILED, FINISHED, PENDING, RUNNING, ClusterState
from ember.runtime.head.task_activity import TaskActivity

SUMMARY_PERIOD = 0.1  # seconds between summaries, at most (the widgets redraw at most ten times a second)
DEFAULT_RECORDS = 10_000  # task records kept for the state API (aggregates stay exact)
# Ray's TaskStatus names. Ember does not tell "waiting for its arguments" from "waiting for a worker":
# both are PENDING_NODE_ASSIGNMENT.
RAY_STATES = {PENDING: "PENDING_NODE_ASSIGNMENT", RUNNING: "RUNNING", FINISHED: "FINISHED", FAILED: "FAILED"}


class TaskSummary:
    """Folds task events; says when a summary is due and gives it."""

    def __init__(self, records: int | None = None):
        if records is None:
            records = int(os.environ.get("EMBER_TASK_TABLE_SIZE", DEFAULT_RECORDS))
        if not isinstance(records, int) or records < 1:
            raise ValueError(f"The task table's capacity must be a positive int, got {records!r}.")
        self.state = ClusterState(max_tasks=records)
        self.task_activity = TaskActivity()
        self._sent_version = -1
        self._sent_running = 0
        self._sent_at = 0.0

    def apply_batch(self, payload: bytes) -> None:
        """One ``TASK_EVENTS`` payload: a msgpack list of ``[kind, task id, time, fields]``. Events of any
        other shape are skipped (a sender's bug must not put junk in the table); ValueError when the
        payload is not such a list at all."""
        try:
            events = msgpack.unpackb(payload, raw=False)
        except Exception as error:
            raise ValueError(f"task events must be a msgpack list: {error}") from None
        if not isinstance(events, list):
            raise ValueError("task events must be a msgpack list")
        apply_task, tasks, ended = self.state.apply_task, self.state.tasks, self.task_activity.ended
        for event in events:
            if _well_formed(event):
                kind, task_id, when, fields = event
                apply_task(kind, task_id, when, fields or {})
                if kind == "finished" or kind == "failed":
                    record = tasks.get(task_id)
                    if record is not None and record.ended == when:
                        ended(record)
        self.state.version += 1

    def rows(self, limit: int | None = None, failed_only: bool = False) -> list:
        """The recent tasks, oldest first, as the state API's rows (times as the events gave them);
        ``limit``: only the newest that many; ``failed_only``: only failed ones."""
        records = reversed(self.state.tasks.values())
        if failed_only:
            records = (record for record in records if record.state == FAILED)
        rows = []
        for record in itertools.islice(records, limit):
            row = {"task_id": record.task_id, "name": record.name, "state": RAY_STATES[record.state]}
            for key in ("parent", "actor", "job", "node", "worker", "pid", "error", "submitted"):
                value = getattr(record, key)
                if value is not None:
                    row[key] = value
            if record.started is not None:
                row["running"] = record.started
            if record.ended is not None and record.state in (FINISHED, FAILED):
                row[record.state] = record.ended
            rows.append(row)
        rows.reverse()
        return rows

    def activity(self, now: float, recent: int, failures: int) -> dict:
        """The dashboard's tasks and nodes pages in one answer: the task stream (per-worker time slots
        over the last half minute), the workers table, the newest ``recent`` tasks and the newest
        ``failures`` failed ones still remembered."""
        tasks = self.state.tasks
        running = [tasks[task_id] for task_id in self.state.running_ids if task_id in tasks]
        return {
            "stream": self.task_activity.snapshot(now, running),
            "workers": self.task_activity.rows(running),
            "recent": self.rows(recent),
            "failures": self.rows(failures, failed_only=True),
        }

    @property
    def dropped(self) -> int:
        """Tasks forgotten to stay within the record bound."""
        return self.state.dropped

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
