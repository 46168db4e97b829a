"""``ember.widgets.progress(refs)``: a bar that fills as refs finish, with failures marked."""

import threading

import ipywidgets as w

import ember
from ember.exceptions import GetTimeoutError
from ember.runtime.ids import TASK_ID_SIZE
from ember.widgets.state import FAILED, FINISHED
from ember.widgets.views import LiveWidget


class ProgressModel:
    """Which of a set of refs are done and which failed, from the task events. A plain class.

    A ref is done when the task that returns it has finished or failed; a ``put`` ref is done at
    once. Refs found ready when the bar is made count as done (events from before the feed started
    are not replayed), and a failure among them is still marked when its event is in the state.
    """

    def __init__(self, object_ids: list):
        self.total = len(object_ids)
        self.tasks: dict = {}  # task id -> how many of the refs it returns
        self.done_early = 0
        for oid in object_ids:
            if oid[TASK_ID_SIZE:] == b"\xff\xff":
                self.done_early += 1
            else:
                task_id = oid[:TASK_ID_SIZE]
                self.tasks[task_id] = self.tasks.get(task_id, 0) + 1
        self.ready_tasks: set = set()
        self.done = self.failed = 0

    def mark_ready(self, object_ids) -> None:
        for oid in object_ids:
            self.ready_tasks.add(oid[:TASK_ID_SIZE])

    def update(self, state) -> bool:
        """Recount from ``state``; True when the counts changed."""
        done, failed = self.done_early, 0
        for task_id, count in self.tasks.items():
            record = state.tasks.get(task_id)
            if record is not None and record.state == FAILED:
                failed += count
                done += count
            elif (record is not None and record.state == FINISHED) or task_id in self.ready_tasks:
                done += count
        changed = (done, failed) != (self.done, self.failed)
        self.done, self.failed = done, failed
        return changed

    def text(self) -> str:
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.done}/{self.total} done{failed}"


class Progress(LiveWidget):
    """A progress bar over ``refs``; red when any failed, green when all finished."""

    def __init__(self, refs, description: str = "", feed=None, **kwargs):
        refs = list(refs)
        self.progress = ProgressModel([ref._id for ref in refs])
        ready, _ = ember.wait(refs, num_returns=len(refs), timeout=0) if refs else ([], [])
        self.progress.mark_ready([ref._id for ref in ready])
        self._done = threading.Condition()
        self.bar = w.IntProgress(value=0, min=0, max=max(1, len(refs)), description=description)
        self.label = w.Label()
        super().__init__(feed=feed, children=[w.HBox([self.bar, self.label])], **kwargs)

    def wait(self, timeout: float | None = None) -> str:
        """Block until the bar shows every ref done (finished or failed); returns its text.

        Raises ``ember.exceptions.GetTimeoutError`` after ``timeout`` seconds.
        """
        with self._done:
            if not self._done.wait_for(lambda: self.progress.done >= self.progress.total, timeout):
                raise GetTimeoutError(f"progress: {self.progress.text()} after {timeout} s")
        return self.label.value

    def update(self, state) -> None:
        with self._done:
            self._update(state)
            self._done.notify_all()

    def _update(self, state) -> None:
        self.progress.update(state)
        self.bar.value = self.progress.done
        self.label.value = self.progress.text()
        if self.progress.failed:
            self.bar.bar_style = "danger"
        elif self.progress.done == self.progress.total:
            self.bar.bar_style = "success"


def progress(refs, description: str = "") -> Progress:
    """A live progress bar that fills as ``refs`` finish (failures turn it red); display it or
    make it a cell's last expression."""
    return Progress(refs, description=description)
