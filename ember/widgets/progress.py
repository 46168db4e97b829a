"""``ember.widgets.progress(refs)``: a proportional bar (finished, failed, running, pending) with
percentage, counts, elapsed time, rate, ETA and the functions behind the refs.

In a notebook it is a live widget; elsewhere (a script, a terminal) the same figures as one text
line, redrawn in place on a terminal and printed at most once a second otherwise. The figures come
from ``ProgressModel`` (ember/widgets/progress_model.py), which knows nothing of either.
"""

import sys
import threading
import time

import ipywidgets as w

import ember
from ember.exceptions import GetTimeoutError
from ember.runtime.ids import TASK_ID_SIZE
from ember.widgets.progress_model import FAILED, ProgressModel, progress_html
from ember.widgets.views import LiveWidget

TEXT_PERIOD = 1.0  # seconds at least between two printed lines when stdout is not a terminal
TTY_PERIOD = 0.1  # seconds between redraws of the line on a terminal
SUBSCRIBE_WAIT = 1.0  # seconds at most to wait for the feed to take task events before counting
RECHECK_PERIOD = 1.0  # seconds between looks at which refs are ready here (events may have been missed)


def _names_of(refs: list) -> dict:
    """The function names of the tasks behind ``refs`` that this process owns (while they run)."""
    names = {}
    try:
        from ember.runtime.client import core_client

        specs = core_client.current_client().submitter.specs
        for ref in refs:
            spec = specs.get(ref._id[:TASK_ID_SIZE])
            if spec is not None and spec.name:
                names[ref._id[:TASK_ID_SIZE]] = spec.name
    except Exception:  # names are a nicety: a borrower's refs get theirs from the events
        pass
    return names


def _model_for(refs: list, names: dict) -> ProgressModel:
    """A model of ``refs`` named with ``names``, the refs already ready marked so."""
    model = ProgressModel([ref._id for ref in refs], names=names)
    _recheck(model, refs)
    return model


def _recheck(model: ProgressModel, refs: list) -> None:
    """Mark the refs ready that are, asking this process's own object table: a task whose events
    went by before the feed took task events would otherwise stay pending on the bar for good. A ref
    this process owns whose task failed holds the error: it is marked failed, not finished."""
    waiting = [ref for ref in refs if ref._id[:TASK_ID_SIZE] not in model.ready_tasks]
    if not waiting:
        return
    ready, _ = ember.wait(waiting, num_returns=len(waiting), timeout=0)
    try:
        from ember.runtime.client import core_client

        entry = core_client.current_client().objects.entry
    except Exception:  # no connection: readiness alone
        entry = None
    for ref in ready:
        owned = entry(ref._id) if entry is not None else None
        if owned is not None and owned.error is not None:
            model.ended_tasks.setdefault(ref._id[:TASK_ID_SIZE], FAILED)
    model.mark_ready([ref._id for ref in ready])


class _Waitable:
    """``wait`` and the condition behind it, shared by the widget and the text form."""

    progress: ProgressModel
    refs: list
    feed: object
    _rechecked = 0.0

    def _follow(self, feed, refs: list) -> None:
        from ember.widgets import events

        # The refs are looked at first: a task that ends meanwhile would lose its name and its times
        # here. One that ends before the feed takes task events is caught by the owner's batching of
        # events (they go out EVENT_PERIOD later) or, failing that, by ``_recount``'s look.
        self.progress = _model_for(refs, _names_of(refs))
        self.feed, self.refs = feed or events.feed(), refs
        self.feed.want_tasks(self, True, wait=SUBSCRIBE_WAIT)

    def _recount(self) -> None:
        """Recount now, with a look at the refs ready here at most every RECHECK_PERIOD seconds."""
        now = time.monotonic()
        with self.feed.lock:
            if now - self._rechecked >= RECHECK_PERIOD and not self.progress.finished:
                self._rechecked = now
                _recheck(self.progress, self.refs)
            self.update(self.feed.state)

    def _count(self, state) -> None:
        with self._done:
            self.progress.update(state)
            if self.progress.finished:
                self.feed.want_tasks(self, False)
            self._done.notify_all()

    def _wait_done(self, timeout: float | None, tick=None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._done:
            while not self.progress.finished:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise GetTimeoutError(f"progress: {self.progress.line()} after {timeout} s")
                period = None if tick is None else tick[0]
                self._done.wait(left if period is None else period if left is None else min(left, period))
                if tick is not None:
                    tick[1]()


class Progress(LiveWidget, _Waitable):
    """A live progress bar over ``refs``: finished, failed, running and pending in proportion."""

    TITLE = "progress"

    def __init__(self, refs, description: str = "", feed=None, **kwargs):
        self._follow(feed, list(refs))
        self.description = description
        self._done = threading.Condition()
        self.html = w.HTML(layout=w.Layout(width="100%"))
        super().__init__(feed=self.feed, children=[self.html], **kwargs)
        # Elapsed time and ETA move without events: a timer keeps them current until done.
        self._ticker = threading.Thread(target=self._tick, name="ember-progress-clock", daemon=True)
        self._ticker.start()

    def wait(self, timeout: float | None = None) -> str:
        """Block until every ref is done (finished or failed); returns the final line of text.

        Raises ``ember.exceptions.GetTimeoutError`` after ``timeout`` seconds.
        """
        self._wait_done(timeout)
        return self.progress.line()

    def update(self, state) -> None:
        self._count(state)
        with self._done:
            self._render()

    def _render(self) -> None:
        body = progress_html(self.progress)
        if self.description:
            body = f"<div class='ember-progress-description'>{_escape(self.description)}</div>{body}"
        self.html.value = body

    def _tick(self) -> None:
        while self.comm is not None and not self.progress.finished:
            time.sleep(1.0)
            if self.comm is not None:
                self._recount()

    def close(self) -> None:
        self.feed.want_tasks(self, False)
        super().close()

    def __str__(self) -> str:
        return self.progress.line()


class TextProgress(_Waitable):
    """The progress of ``refs`` as a line of text, for scripts and terminals (no kernel).

    ``wait()`` prints as it goes: on a terminal one line redrawn in place, elsewhere a new line when
    the figures changed, at most once a second. ``str()`` is the current line.
    """

    def __init__(self, refs, description: str = "", feed=None, stream=None):
        self._done = threading.Condition()
        self._follow(feed, list(refs))
        self.description = description
        self.stream = stream if stream is not None else sys.stdout
        self._printed = ""
        self._printed_at = float("-inf")
        with self.feed.lock:
            self.update(self.feed.state)
        self.feed.add_listener(self.update)

    def update(self, state) -> None:
        self._count(state)

    def line(self) -> str:
        prefix = f"{self.description}: " if self.description else ""
        return prefix + self.progress.line()

    def wait(self, timeout: float | None = None) -> str:
        """Print progress until every ref is done; returns the final line.

        Raises ``ember.exceptions.GetTimeoutError`` after ``timeout`` seconds."""
        tty = _isatty(self.stream)
        try:
            self._wait_done(timeout, tick=(TTY_PERIOD if tty else 0.25, lambda: self._tick(tty)))
        finally:
            self._print(tty, final=True)
            if self.progress.finished:  # here, not in update: the feed calls it holding the lock this takes
                self.close()
        return self.line()

    def _print(self, tty: bool, final: bool = False) -> None:
        text = self.line()
        now = time.monotonic()
        if tty:
            # Padded over the previous line, which may have been longer.
            pad = max(0, len(self._printed) - len(text))
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
        elif text != self._printed and (final or now - self._printed_at >= TEXT_PERIOD):
            self.stream.write(text + "\n")
        else:
            return
        self.stream.flush()
        self._printed, self._printed_at = text, now

    def _tick(self, tty: bool) -> None:
        self._done.release()  # recounting takes the feed's lock first, as the feed's thread does
        try:
            self._recount()
        finally:
            self._done.acquire()
        self._print(tty)

    def close(self) -> None:
        self.feed.remove_listener(self.update)
        self.feed.want_tasks(self, False)

    def __str__(self) -> str:
        return self.line()

    __repr__ = __str__


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _escape(text: str) -> str:
    import html

    return html.escape(text)


def in_kernel() -> bool:
    """Whether this process is a Jupyter kernel (a frontend can show widgets)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def progress(refs, description: str = ""):
    """Progress of ``refs`` (a task's or actor call's ObjectRefs): a live widget in a notebook (make
    it a cell's last expression, or ``display`` it), a line of text elsewhere; ``.wait()`` blocks until
    all are done, printing the line as it goes outside a notebook."""
    if in_kernel():
        return Progress(refs, description=description)
    return TextProgress(refs, description=description)
