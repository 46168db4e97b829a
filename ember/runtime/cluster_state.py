"""The cluster as the event stream tells it: tasks, nodes, actors. A plain class, no I/O.

``ClusterState.apply(topic, body)`` takes one decoded message of the head's event hub
(``event:task`` batches, ``event:summary``, ``event:node``, ``event:actor``); the widgets read the
result. Kept apart from the socket and from ipywidgets so that aggregation is unit-tested with
hand-made events.

Two processes hold one. The head folds every task event into its own and publishes the aggregates
(``summary_message``) ten times a second. A kernel showing widgets takes those summaries (after the
first, its aggregates come only from them) and applies per-task events only while a view needs task
records (a progress bar, a task graph below its threshold): decoding every task's events in the
driver cost the driver a tenth of its task throughput.
"""

import time
from collections import Counter, OrderedDict

import numpy as np

from ember.runtime.ids import TASK_ID_SIZE

PENDING, RUNNING, FINISHED, FAILED = "pending", "running", "finished", "failed"
STATES = (PENDING, RUNNING, FINISHED, FAILED)
ACTOR_FIELDS = ("state", "name", "class_name", "pid", "node_id", "num_restarts")
MAX_TASKS = 50_000  # records kept; the oldest ended ones are forgotten first (counts stay exact)
EMPTY_SUMMARY = {"counts": {}, "by_name": {}, "durations": {}, "edges": [], "actor_calls": {}}
FORGET_SCAN = 64  # records looked at for an ended one to forget, past which the oldest goes
# Tasks shorter than the owner's event period are only reported after they ended (one folded record):
# the task time spent in the last BUSY_WINDOW seconds, BUSY_LAG ago (when their reports are in), says
# how many ran at a time.
BUSY_WINDOW = 1.0  # long enough that an owner noting several ends at once does not inflate it
BUSY_LAG = 0.3


class TaskRecord:
    """One task as the events describe it."""

    __slots__ = (
        "task_id",
        "name",
        "state",
        "parent",
        "deps",
        "actor",
        "tag",
        "job",
        "node",
        "pid",
        "worker",
        "submitted",
        "started",
        "ended",
        "error",
    )

    def __init__(self, task_id: bytes, name: str = "?"):
        self.task_id = task_id
        self.name = name
        self.state = PENDING
        self.parent = self.actor = self.tag = self.job = self.node = self.pid = self.worker = None
        self.deps: list = []
        self.submitted = self.started = self.ended = None
        self.error = None

    @property
    def duration(self) -> float | None:
        """Seconds from running to ended (or None while it has not ended)."""
        if self.started is None or self.ended is None:
            return None
        return max(0.0, self.ended - self.started)


class ClusterState:
    """Aggregates the event stream. ``version`` grows with every change (the widgets redraw on it)."""

    def __init__(self, max_tasks: int = MAX_TASKS, since_start: bool = False):
        self.max_tasks = max_tasks
        self.tasks: OrderedDict = OrderedDict()
        self.counts: dict = dict.fromkeys(STATES, 0)  # tasks per state, over everything seen
        self.by_name: dict = {}  # function name -> {state: count}
        # Kept up to date event by event, so that a widget's redraw costs O(functions), not O(tasks):
        self.node_pids: dict = {}  # node id -> worker pids seen running tasks there
        self.durations: dict = {}  # function name -> [total seconds, count] of ended tasks
        self.name_edges: Counter = Counter()  # (producer name, consumer name) -> dependencies
        self.nodes: dict = {}  # node id (hex) -> latest node event (+ "resources" from snapshots)
        self.actors: dict = {}  # actor id (hex) -> the fields of ACTOR_FIELDS from its latest event
        self.actor_calls: Counter = Counter()  # actor id (hex) -> calls seen ending
        self.intervals = Intervals(MAX_TASKS)  # (started, ended) of ended tasks, about in end order
        self.running_ids: set = set()  # tasks reported running and not ended
        self.version = 0
        self.cleared_at = 0.0
        self.records_made = 0  # task records ever made here (a view finds its newest ones by it)
        self.dropped = 0  # task records forgotten to stay within max_tasks
        # Set by the first head summary: from then on the aggregates above are the head's, less the
        # tasks that had ended before this process looked (or before clear_tasks), and task events
        # only keep records.
        self.summarized = False
        # The ended-task aggregates to subtract, from a summary; with ``since_start`` none: the
        # cluster's totals since it started (the dashboard's pages), not since this process looked.
        self._base: dict | None = EMPTY_SUMMARY if since_start else None
        self._last_summary: dict | None = None
        self._summary_seq = 0  # the head's state version of the newest summary loaded
        self._running = 0  # the head's figure of tasks running
        self._workers: dict = {}  # the head's figure of worker processes per node
        self.creators: dict = {}  # task id -> name, for the largest objects (from the head)

    # --- input ----------------------------------------------------------------------------------------
    def apply(self, topic: bytes, body) -> None:
        """Apply one decoded event-hub message."""
        if topic == b"event:task":
            for kind, task_id, when, fields in body:
                self.apply_task(kind, task_id, when, fields or {})
        elif topic == b"event:node":
            self.apply_node(body)
        elif topic == b"event:summary":
            self.load_summary(body)
        elif topic == b"event:actor":
            actor_id = _hex(body.get("actor_id"))
            self.actors[actor_id] = {k: _hex(body.get(k)) for k in ACTOR_FIELDS}
        else:
            return
        self.version += 1

    def apply_task(self, kind: str, task_id: bytes, when: float, fields: dict) -> None:
        """One task event. An owner folds the states a task went through within one batch into one
        event in its latest state, with ``times`` of the earlier ones: they are applied in order."""
        times = fields.get("times")
        if times and (kind == "finished" or kind == "failed") and len(times) == 2 and task_id not in self.tasks:
            self._apply_whole(kind, task_id, when, fields, times)
            return
        if times:
            for earlier in ("submitted", "running"):
                if earlier in times and earlier != kind:
                    self._apply_one(earlier, task_id, times[earlier], fields)
        self._apply_one(kind, task_id, when, fields)

    def _apply_whole(self, kind: str, task_id: bytes, when: float, fields: dict, times: dict) -> None:
        """A task we had not heard of, submitted, run and ended within one batch: the common case
        under load, so it is recorded in one step rather than through each state in turn."""
        if times["submitted"] < self.cleared_at:
            return
        name = fields.get("name") or "?"
        record = TaskRecord(task_id, name)
        record.parent, record.actor, record.tag, record.job = (
            fields.get("parent"),
            fields.get("actor"),
            fields.get("tag"),
            fields.get("job"),
        )
        deps = fields.get("deps")
        if deps:
            self._link(record, deps, name)
        self._ran_on(record, fields)
        record.submitted, record.ended = times["submitted"], when
        record.started = _run_start(times["running"], when, fields)
        state = FINISHED if kind == "finished" else FAILED
        if state is FAILED:
            record.error = fields.get("error")
        record.state = state
        self.tasks[task_id] = record
        self.records_made += 1
        if not self.summarized:
            self.counts[state] += 1
            self._named(name)[state] += 1
            self._ended(record)
        if len(self.tasks) > self.max_tasks:
            self._forget_old()

    def _apply_one(self, kind: str, task_id: bytes, when: float, fields: dict) -> None:
        # The hot path of the widgets: plain dict operations.
        record = self.tasks.get(task_id)
        if record is None:
            if when < self.cleared_at:
                return
            record = TaskRecord(task_id, fields.get("name") or "?")
            self.tasks[task_id] = record
            self.records_made += 1
            if not self.summarized:
                self.counts[PENDING] += 1
                self._named(record.name)[PENDING] += 1
            if len(self.tasks) > self.max_tasks:
                self._forget_old()
        if kind == "submitted":
            name = fields.get("name") or record.name
            if name != record.name:
                if not self.summarized:
                    self._named(record.name)[record.state] -= 1
                    self._named(name)[record.state] += 1
                record.name = name
            record.parent = fields.get("parent")
            deps = fields.get("deps")
            if deps:
                self._link(record, deps, name)
            record.actor, record.tag, record.job = fields.get("actor"), fields.get("tag"), fields.get("job")
            record.submitted = when
            return
        if kind == "running":
            new_state = RUNNING
            self._ran_on(record, fields)
            record.started, record.ended, record.error = when, None, None  # a retry runs again
        elif kind == "finished" or kind == "failed":
            new_state, record.ended = (FINISHED, when) if kind == "finished" else (FAILED, when)
            record.started = _run_start(record.started, when, fields)
            if kind == "failed":
                record.error = fields.get("error")
            if not self.summarized:
                self._ended(record)
        else:
            return
        old = record.state
        if self.summarized:
            record.state = new_state
        elif old != new_state:
            if new_state is RUNNING:
                self.running_ids.add(task_id)
            elif old is RUNNING:
                self.running_ids.discard(task_id)
            record.state = new_state
            counts = self.counts
            counts[old] -= 1
            counts[new_state] += 1
            named = self._named(record.name)
            named[old] -= 1
            named[new_state] += 1

    def _link(self, record: TaskRecord, deps: list, name: str) -> None:
        """A task's ObjectRef arguments: its dependencies, and edges between functions."""
        record.deps = [oid[:TASK_ID_SIZE] for oid in deps]
        if self.summarized:
            return
        for dep in record.deps:
            source = self.tasks.get(dep)
            if source is not None:
                self.name_edges[(source.name, name)] += 1

    def _ran_on(self, record: TaskRecord, fields: dict) -> None:
        node = fields.get("node")
        record.node = node.hex() if isinstance(node, bytes) else node
        record.pid = fields.get("pid")
        record.worker = fields.get("worker")
        if record.node is not None and not self.summarized:
            pids = self.node_pids.get(record.node)
            if pids is None:
                pids = self.node_pids[record.node] = set()
            pids.add(record.pid)

    def _ended(self, record: TaskRecord) -> None:
        if record.actor is not None:
            self.actor_calls[_hex(record.actor)] += 1
        if record.started is not None:
            total = self.durations.get(record.name)
            if total is None:
                total = self.durations[record.name] = [0.0, 0]
            total[0] += max(0.0, record.ended - record.started)
            total[1] += 1
            self.intervals.append(record.started, record.ended)

    def _named(self, name: str) -> dict:
        named = self.by_name.get(name)
        if named is None:
            named = self.by_name[name] = dict.fromkeys(STATES, 0)
        return named

    def apply_node(self, body: dict) -> None:
        node_id = _hex(body.get("node_id"))
        node = self.nodes.setdefault(node_id, {"node_id": node_id, "alive": True})
        for key, value in body.items():
            if key != "node_id":
                node[key] = value

    def load_snapshot(self, nodes: list) -> None:
        """Seed nodes from ``ember.nodes()`` (the stream only says what changes)."""
        for entry in nodes:
            node = self.nodes.setdefault(entry["NodeID"], {"node_id": entry["NodeID"]})
            node["alive"] = entry["Alive"]
            node["resources"] = entry["Resources"]
            node.setdefault("store", entry.get("ObjectStore") or {})
            if entry.get("RAM"):
                node.setdefault("ram", entry["RAM"])
            node.setdefault("available", dict(entry["Resources"]))
        self.version += 1

    def clear_tasks(self, now: float | None = None) -> None:
        """Forget every task; events stamped before ``now`` (default: this moment) are ignored from
        here on, so a batch still in flight cannot bring back a task that ended before the clear. Once
        the aggregates come from the head's summaries, those tasks counted so far are forgotten: one
        whose events are still on their way counts after the clear."""
        self.cleared_at = time.time() if now is None else now
        self.tasks.clear()
        self.counts = dict.fromkeys(STATES, 0)
        self.by_name.clear()
        self.durations.clear()
        self.name_edges.clear()
        self.intervals.clear()
        self.running_ids.clear()
        if self._last_summary is not None:  # the head's tasks so far are behind us too
            self._base = self._last_summary
            self.load_summary(self._last_summary)
        self.version += 1

    def end_job(self, job_id: bytes, when: float) -> None:
        """A job's driver ended (head side): its tasks that had not ended never will report (their
        owners are gone), so they count as failed rather than as pending or running for good."""
        orphans = [r.task_id for r in self.tasks.values() if r.job == job_id and r.state in (PENDING, RUNNING)]
        for task_id in orphans:
            self._apply_one("failed", task_id, when, {"error": "OwnerDiedError: the job's driver ended"})
        if orphans:
            self.version += 1

    def forget_records(self) -> None:
        """Drop the task records, keeping the aggregates (a kernel that stops taking task events: the
        records would stay in whatever state they were last seen in)."""
        self.tasks.clear()
        self.running_ids.clear()
        self.version += 1

    # --- the head's summary ------------------------------------------------------------------------------
    def summary_message(self, now: float | None = None, objects=()) -> dict:
        """The aggregates the views show, for the head's ``event:summary`` (``load_summary`` reads it);
        ``objects``: object ids whose making task to name (the largest objects of each store)."""
        creators = []
        for object_id in objects:
            record = self.tasks.get(object_id[:TASK_ID_SIZE])
            if record is not None:
                creators.append([record.task_id, record.name])
        return {
            "seq": self.version,  # a kernel keeps the newest (a published and a queried one may cross)
            "counts": self.counts,
            "by_name": self.by_name,
            "durations": self.durations,
            "edges": [[source, target, n] for (source, target), n in self.name_edges.items()],
            "running": self.running_now(now),
            "workers": self.workers(),
            "actor_calls": self.actor_calls,
            "creators": creators,
        }

    def load_summary(self, body: dict) -> None:
        """A head summary (kernel side): from now on the aggregates are the head's, less what the first
        summary counted (or the one at ``clear_tasks``), so that a kernel shows what happened since it
        looked, as it did when it counted events itself. Pending and running are net of what was
        pending and running then (never below zero): a long call still waiting from before, on an
        actor nobody stopped, is not this kernel's work."""
        seq = body.get("seq", 0)
        if seq < self._summary_seq:
            return  # older than one already loaded (a summary asked for overtook a published one)
        self._summary_seq = seq
        self.summarized = True
        self._last_summary = body
        base = self._base
        if base is None:
            base = self._base = body
        counts = {state: max(0, body["counts"].get(state, 0) - base["counts"].get(state, 0)) for state in STATES}
        self.counts = counts
        by_name = {}
        for name, named in body["by_name"].items():
            old = base["by_name"].get(name) or {}
            named = {state: max(0, named.get(state, 0) - old.get(state, 0)) for state in STATES}
            if any(named.values()):
                by_name[name] = named
        self.by_name = by_name
        durations = {}
        for name, (seconds, count) in body["durations"].items():
            old = base["durations"].get(name)
            if old:
                seconds, count = seconds - old[0], count - old[1]
            if count > 0:
                durations[name] = [seconds, count]
        self.durations = durations
        edges = Counter({(source, target): n for source, target, n in body["edges"]})
        edges.subtract({(source, target): n for source, target, n in base["edges"]})
        self.name_edges = Counter({edge: n for edge, n in edges.items() if n > 0})
        self.actor_calls = Counter(body["actor_calls"]) - Counter(base["actor_calls"])
        self._running = max(0, body["running"] - base["counts"].get(RUNNING, 0))
        self._workers = body["workers"]
        self.creators = {task_id: name for task_id, name in body["creators"]}

    # --- bookkeeping ----------------------------------------------------------------------------------
    def _forget_old(self) -> None:
        # Forget ended tasks first, oldest first; counts keep them (the totals stay true). Only the
        # oldest few are looked at: behind thousands of queued tasks a full scan at every new task
        # made a burst quadratic; the oldest one goes when none of them has ended.
        while len(self.tasks) > self.max_tasks:
            self.dropped += 1
            for looked, (task_id, record) in enumerate(self.tasks.items()):
                if record.state in (FINISHED, FAILED):
                    del self.tasks[task_id]
                    break
                if looked == FORGET_SCAN:
                    self.running_ids.discard(self.tasks.popitem(last=False)[0])
                    break

    # --- views ----------------------------------------------------------------------------------------
    def summary(self, tag=None) -> dict:
        """Tasks per state: ``{"pending": n, "running": n, "finished": n, "failed": n}``; with ``tag``,
        only the tasks submitted under that output tag (one notebook cell's, say) still remembered."""
        if tag is None:
            return {state: self.counts[state] for state in STATES}
        counts = Counter(record.state for record in self.tasks.values() if record.tag == tag)
        return {state: counts[state] for state in STATES}

    def running_now(self, now: float | None = None) -> int:
        """How many tasks run, as best the events tell: those reported running, or, when more, the
        average number that ran at a time over the last ``BUSY_WINDOW`` seconds their reports cover.
        Short tasks are reported only once they ended, so counting states alone said "0 running"
        while every CPU was busy with them; long ones are reported running at once."""
        if self.summarized:
            return self._running
        running = self.counts[RUNNING]
        intervals = self.intervals
        if not intervals or (running == 0 and self.counts[PENDING] == 0):
            return running  # nothing queued nor running: whatever ran has ended
        end = (time.time() if now is None else now) - BUSY_LAG
        start = end - BUSY_WINDOW
        busy = intervals.busy(start, end)
        tasks = self.tasks
        for task_id in self.running_ids:
            record = tasks.get(task_id)
            began = record.started if record is not None else None
            if began is not None and began < end:
                busy += end - max(began, start)
        return max(running, round(busy / BUSY_WINDOW))

    def workers(self) -> dict:
        """Per node: the distinct worker processes seen running tasks."""
        if self.summarized:
            return dict(self._workers)
        return {node: len(pids) for node, pids in self.node_pids.items()}

    def creator_of(self, object_id: bytes) -> str:
        """What made an object: ``task name`` (a task's return) or ``put``."""
        record = self.tasks.get(object_id[:TASK_ID_SIZE])
        if record is not None:
            return record.name
        name = self.creators.get(object_id[:TASK_ID_SIZE])
        if name is not None:
            return name
        return "put" if object_id[TASK_ID_SIZE:] == b"\xff\xff" else "?"


class Intervals:
    """The (start, end) times of ended tasks, oldest first, in numpy arrays: under load thousands
    end each second, and the busy time in a window is asked ten times a second (a Python loop over
    them took milliseconds of the kernel's time at every redraw)."""

    def __init__(self, cap: int):
        self.cap = cap
        self.starts = np.empty(1024)
        self.ends = np.empty(1024)
        self.head = 0  # the oldest kept
        self.size = 0  # one past the newest

    def __len__(self) -> int:
        return self.size - self.head

    def append(self, started: float, ended: float) -> None:
        if self.size == len(self.starts):
            self._make_room()
        self.starts[self.size] = started
        self.ends[self.size] = ended
        self.size += 1

    def _make_room(self) -> None:
        kept = max(self.head, self.size - self.cap)  # past the cap, the oldest are forgotten
        count = self.size - kept
        capacity = len(self.starts) if count < len(self.starts) // 2 else len(self.starts) * 2
        for name in ("starts", "ends"):
            old = getattr(self, name)
            new = old if capacity == len(old) else np.empty(capacity)
            new[:count] = old[kept : self.size]
            setattr(self, name, new)
        self.head, self.size = 0, count

    def busy(self, start: float, end: float) -> float:
        """Task-seconds run within [start, end]; intervals that ended before ``start`` are dropped
        (from the oldest on, up to the first one that did not: they come about in end order)."""
        ends = self.ends[self.head : self.size]
        old = ends < start
        self.head += len(ends) if old.all() else int(old.argmin())
        starts, ends = self.starts[self.head : self.size], self.ends[self.head : self.size]
        overlap = np.minimum(ends, end) - np.maximum(starts, start)
        return float(overlap[overlap > 0].sum())

    def clear(self) -> None:
        self.head = self.size = 0


def _run_start(dispatched: float | None, ended: float, fields: dict) -> float | None:
    """When a task really started: the owner's "running" is when it sent the task, and an actor runs
    its calls one after another, so a call can wait there long; the worker's ``ran`` (the seconds it
    ran) gives the start without that wait."""
    ran = fields.get("ran")
    if ran is None:
        return dispatched
    start = ended - ran
    return start if dispatched is None or start > dispatched else dispatched


def _hex(value) -> str | None:
    if isinstance(value, bytes):
        return value.hex()
    return value
