"""The task events an owner sends to the head's event hub (the state API and the widgets read them).

Events go out in batches, at most every ``EVENT_PERIOD`` seconds, and never wait for anyone: the
hot path pays one list append per state change. A task that changes state several times within one
period goes out as one record in its latest state, with the times of the earlier ones.
"""

import time

EVENT_PERIOD = 0.1  # a task's events are held this long (a short task's go out as one record)
MAX_HELD_EVENTS = 20_000  # past this many held records, they all go out at once


class TaskEventBatcher:
    """Held records, in first-seen order: ``[kind, task id, wall time, fields, monotonic first seen]``.
    A plain object (no sockets): the client asks ``due`` each round and sends what ``take_due`` gives."""

    def __init__(self, job_id_of):
        self._job_id_of = job_id_of  # () -> the job id of the process (known after it connected)
        self.held: list = []
        self._by_task: dict = {}  # task id -> its record in the batch being built
        self._due = 0.0

    def __bool__(self) -> bool:
        return bool(self.held)

    def note(self, kind: str, task_id: bytes, **fields) -> None:
        """On the I/O thread: a state change of a task we own."""
        record = self._by_task.get(task_id)
        if record is None:
            if kind == "submitted":
                fields["job"] = self._job_id_of()
            now = time.monotonic()
            if not self.held:
                self._due = now + EVENT_PERIOD
            record = self._by_task[task_id] = [kind, task_id, time.time(), fields, now]
            self.held.append(record)
            if len(self.held) >= MAX_HELD_EVENTS:
                self._due = now  # a long burst: send what we have at the next round
            return
        # A later state of a task already in this batch (most tasks, when they are short): one
        # record in its latest state, with the times of the earlier ones, costs a subscriber a third.
        merged = record[3]
        merged.setdefault("times", {})[record[0]] = record[2]
        merged.update(fields)
        record[0], record[2] = kind, time.time()

    def due(self, now: float) -> bool:
        return bool(self.held) and now >= self._due

    def take_due(self, now: float) -> list:
        """The records first seen at least EVENT_PERIOD ago, as ``[kind, task id, time, fields]``;
        younger ones wait for the next round, as their tasks may finish meanwhile."""
        held = self.held
        cutoff = float("inf") if len(held) >= MAX_HELD_EVENTS else now - EVENT_PERIOD
        split = 0
        while split < len(held) and held[split][4] <= cutoff:
            split += 1
        send, self.held = held[:split], held[split:]
        for record in send:
            del self._by_task[record[1]]
        if self.held:
            # Not before a whole period from now: at the oldest held record's own due time, a steady
            # stream of short tasks would send a batch of one or two records every round.
            self._due = max(self.held[0][4], now) + EVENT_PERIOD
        return [record[:4] for record in send]
