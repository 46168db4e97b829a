"""What each worker ran lately, in time slots: the dashboard's task stream and workers table.

    TaskSummary.apply_batch --ended(record)--> TaskActivity: per worker (node, pid), per slot of
                                               SLOT_S seconds, busy seconds per function
    STATE_QUERY "activity" <-- snapshot(now, running records): per worker, runs of slots merged
                               where the same function kept it about as busy

The dashboard once took every task's events to draw its task stream; at thousands of tasks a second
that decoding slowed the cluster it watched (issue 15's target: a browser on the tasks page costs at
most 5% of task throughput). Slots bound the answer by time instead of by tasks: a worker running
3,000 no-op tasks a second is one bar per slot however many tasks that is, and the head folds each
ended task in a few dict operations. Memory is bounded: slots older than ``window`` and workers idle
for ``forget_s`` are dropped, and at most ``max_workers`` are kept. A plain object: no sockets.
"""

import math

SLOT_S = 0.25  # seconds per slot: a 30 s stream is 120 slots a worker at most
WINDOW_S = 30.0  # how far back the stream reaches
FORGET_S = 300.0  # a worker that ran nothing for this long leaves the workers table
MAX_WORKERS = 4096
SAME_BUSY = 0.15  # neighbouring slots of one function merge when their busy shares differ by less


class WorkerActivity:
    """One worker process as its ended tasks tell it."""

    __slots__ = ("node", "pid", "slots", "tasks", "last_name", "last_end")

    def __init__(self, node, pid: int):
        self.node, self.pid = node, pid
        self.slots: dict = {}  # slot index -> [{function: busy seconds}, tasks ended, failed]
        self.tasks = 0
        self.last_name, self.last_end = "", 0.0


class TaskActivity:
    """Folds ended tasks into per-worker slots; ``snapshot`` answers the dashboard."""

    def __init__(self, window: float = WINDOW_S, slot: float = SLOT_S, max_workers: int = MAX_WORKERS):
        if not slot > 0 or not window >= slot:
            raise ValueError(f"slot must be positive and window at least one slot, got {slot!r} and {window!r}.")
        if not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be a positive int, got {max_workers!r}.")
        self.window, self.slot, self.max_workers = window, slot, max_workers
        self.workers: dict = {}  # (node, pid) -> WorkerActivity

    def ended(self, record) -> None:
        """A task record that has just ended (finished or failed); records that never ran on a known
        worker (cancelled before a lease, say) are skipped."""
        pid, started, ended, name = record.pid, record.started, record.ended, record.name
        if pid is None or started is None or ended is None:
            return
        key = (record.node, pid)
        worker = self.workers.get(key)
        if worker is None:
            if len(self.workers) >= self.max_workers:
                self._forget(ended, room=True)
            worker = self.workers[key] = WorkerActivity(record.node, pid)
        worker.tasks += 1
        worker.last_name = name
        if ended > worker.last_end:
            worker.last_end = ended
        failed = record.state == "failed"
        index = int(started // self.slot)
        if started < ended <= (index + 1) * self.slot:  # within one slot: most tasks, the head's hot path
            entry = worker.slots.get(index)
            if entry is None:
                entry = worker.slots[index] = [{}, 0, 0]
            names = entry[0]
            names[name] = names.get(name, 0.0) + (ended - started)
            entry[1] += 1
            entry[2] += failed
        else:
            _add(worker.slots, self.slot, self.window, started, ended, name, failed)

    def snapshot(self, now: float, running=()) -> dict:
        """The last ``window`` seconds up to wall-clock ``now``: ``{"start", "end", "slot", "workers":
        [{"node", "pid", "runs": [[start, end, function, busy share, tasks ended, failed]]}]}`` for the
        workers that ran something in it; ``running`` (records still running) reach ``now``."""
        self._forget(now)
        start = now - self.window
        first = int(start // self.slot)
        extra: dict = {}
        for record in running:
            if record.pid is None or record.started is None:
                continue
            slots = extra.setdefault((record.node, record.pid), ({}, record.name))[0]
            _add(slots, self.slot, self.window, max(record.started, start), now, record.name, False, ended_here=False)
        workers = []
        for key in sorted(set(self.workers) | set(extra), key=lambda key: (str(key[0]), key[1])):
            worker = self.workers.get(key)
            slots = {i: s for i, s in worker.slots.items() if i >= first} if worker is not None else {}
            busy_now = extra.get(key, ({}, None))[0]
            for index, (names, _, _) in busy_now.items():
                kept = slots.get(index) or [{}, 0, 0]
                merged = dict(kept[0])  # a copy: what runs now is not stored
                for name, seconds in names.items():
                    merged[name] = merged.get(name, 0.0) + seconds
                slots[index] = [merged, kept[1], kept[2]]
            if not slots:
                continue  # idle all window: in the workers table only (see rows())
            workers.append({"node": key[0], "pid": key[1], "runs": self._runs(slots, start, now)})
        return {"start": start, "end": now, "slot": self.slot, "workers": workers}

    def rows(self, running=()) -> list:
        """The workers table: every worker remembered, busy ones with what they run now."""
        now_running = {(r.node, r.pid): r.name for r in running if r.pid is not None}
        rows = []
        for key, worker in self.workers.items():
            name = now_running.pop(key, None)
            rows.append(
                {
                    "node_id": key[0],
                    "pid": key[1],
                    "state": "busy" if name is not None else "idle",
                    "task": name or worker.last_name,
                    "tasks": worker.tasks,
                }
            )
        for (node, pid), name in now_running.items():
            rows.append({"node_id": node, "pid": pid, "state": "busy", "task": name, "tasks": 0})
        return rows

    def _runs(self, slots: dict, start: float, now: float) -> list:
        # One bar per run of neighbouring slots where the same function kept the worker about as
        # busy: a steady worker is a handful of bars, not one per slot or per task.
        runs = []
        for index in sorted(slots):
            names, tasks, failed = slots[index]
            if not names:
                continue
            name = max(names, key=names.get)
            lo, hi = max(index * self.slot, start), min((index + 1) * self.slot, now)
            busy = min(1.0, sum(names.values()) / max(hi - lo, 1e-9))
            last = runs[-1] if runs else None
            if last is not None and last[1] >= lo - 1e-9 and last[2] == name and abs(last[3] - busy) < SAME_BUSY:
                width, added = last[1] - last[0], hi - lo
                last[3] = (last[3] * width + busy * added) / max(width + added, 1e-9)
                last[1], last[4], last[5] = hi, last[4] + tasks, last[5] + failed
            else:
                runs.append([lo, hi, name, busy, tasks, failed])
        return [[lo, hi, name, round(busy, 3), tasks, failed] for lo, hi, name, busy, tasks, failed in runs]

    def _forget(self, now: float, room: bool = False) -> None:
        first = int((now - self.window) // self.slot)
        for key, worker in list(self.workers.items()):
            if worker.slots and min(worker.slots) < first:
                worker.slots = {i: s for i, s in worker.slots.items() if i >= first}
            if not worker.slots and worker.last_end < now - FORGET_S:
                del self.workers[key]
        while len(self.workers) >= self.max_workers + (not room):
            oldest = min(self.workers, key=lambda key: self.workers[key].last_end)
            del self.workers[oldest]


def _add(
    slots: dict,
    slot: float,
    window: float,
    began: float,
    ended: float,
    name: str,
    failed: bool,
    ended_here: bool = True,
) -> None:
    """``began``..``ended`` split over the slots it spans (at most a window's worth); the task counts
    in the slot it ended in."""
    began = max(began, ended - window)
    first = int(began // slot)
    last = max(first, math.ceil(ended / slot) - 1)  # a task ending on a slot's edge ends in the slot before
    for index in range(first, last + 1):
        seconds = min(ended, (index + 1) * slot) - max(began, index * slot)
        entry = slots.get(index)
        if entry is None:
            entry = slots[index] = [{}, 0, 0]
        entry[0][name] = entry[0].get(name, 0.0) + max(seconds, 0.0)
    if ended_here:
        entry[1] += 1
        entry[2] += failed
