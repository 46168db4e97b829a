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
from ember.widgets.progress_model import ProgressModel, progress_html
from ember.widgets.views import LiveWidget

TEXT_PERIOD = 1.0  # seconds at least between two printed lines when stdout is not a terminal
TTY_PERIOD = 0.1  # seconds between redraws of the line on a terminal


def _model_for(refs: list) -> ProgressModel:
    """A model of ``refs`` with the names of the tasks this process owns, and the refs already ready."""
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
    model = ProgressModel([ref._id for ref in refs], names=names)
    ready, _ = ember.wait(refs, num_returns=len(refs), timeout=0) if refs else ([], [])
    model.mark_ready([ref._id for ref in ready])
    return model


class _Waitable:
    """``wait`` and the condition behind it, shared by the widget and the text form."""

    progress: ProgressModel

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
        refs = list(refs)
        self.progress = _model_for(refs)
        self.description = description
        self._done = threading.Condition()
        self.html = w.HTML(layout=w.Layout(width="100%"))
        super().__init__(feed=feed, children=[self.html], **kwargs)
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
        with self._done:
            self.progress.update(state)
            self._render()
            self._done.notify_all()

    def _render(self) -> None:
        body = progress_html(self.progress)
        if self.description:
            body = f"<div class='ember-progress-description'>{_escape(self.description)}</div>{body}"
        self.html.value = body

    def _tick(self) -> None:
        while self.comm is not None and not self.progress.finished:
            time.sleep(1.0)
            with self._done:
                if not self.progress.finished:
                    self._render()

    def __str__(self) -> str:
        return self.progress.line()


class TextProgress(_Waitable):
    """The progress of ``refs`` as a line of text, for scripts and terminals (no kernel).

    ``wait()`` prints as it goes: on a terminal one line redrawn in place, elsewhere a new line when
    the figures changed, at most once a second. ``str()`` is the current line.
    """

    def __init__(self, refs, description: str = "", feed=None, stream=None):
        from ember.widgets import events

        self.progress = _model_for(list(refs))
        self.description = description
        self.stream = stream if stream is not None else sys.stdout
        self._done = threading.Condition()
        self._printed = ""
        self._printed_at = float("-inf")
        self.feed = feed or events.feed()
        with self.feed.lock:
            self.update(self.feed.state)
        self.feed.add_listener(self.update)

    def update(self, state) -> None:
        with self._done:
            self.progress.update(state)
            self._done.notify_all()

    def line(self) -> str:
        prefix = f"{self.description}: " if self.description else ""
        return prefix + self.progress.line()

    def wait(self, timeout: float | None = None) -> str:
        """Print progress until every ref is done; returns the final line.

        Raises ``ember.exceptions.GetTimeoutError`` after ``timeout`` seconds."""
        tty = _isatty(self.stream)
        try:
            self._wait_done(timeout, tick=(TTY_PERIOD if tty else 0.25, lambda: self._print(tty)))
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

    def close(self) -> None:
        self.feed.remove_listener(self.update)

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
