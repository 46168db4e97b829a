"""What ``ember.widgets.progress(refs)`` shows, as plain data and text: no ipywidgets, no I/O.

``ProgressModel`` counts a set of refs as finished, failed, running or pending from a ``ClusterState``
(the task events), and derives the percentage, elapsed time, rate and ETA; ``progress_html`` and
``ProgressModel.line`` render it for a notebook and for a terminal. Clocks are passed in, so the
arithmetic is tested with hand-made events and made-up times.
"""

import html
import time

from ember.runtime.cluster_state import FAILED, FINISHED, PENDING, RUNNING
from ember.runtime.ids import TASK_ID_SIZE

SEGMENTS = (FINISHED, FAILED, RUNNING, PENDING)  # left to right in the bar
SEGMENT_COLOURS = {
    FINISHED: "var(--jp-success-color1, #16a34a)",
    FAILED: "var(--jp-error-color1, #dc2626)",
    RUNNING: "var(--jp-brand-color1, #2563eb)",
    PENDING: "var(--jp-layout-color3, #d1d5db)",
}
TEXT_SYMBOLS = {FINISHED: "#", FAILED: "!", RUNNING: ">", PENDING: "."}
MAX_NAMES = 3  # function names listed in the title; more read "and N more"


class ProgressModel:
    """Which of a set of refs are finished, failed, running or pending, from the task events.

    A ref is done when the task that returns it has finished or failed; a ``put`` ref is done at once.
    Refs found ready when the bar is made count as finished (events from before the feed started are
    not replayed), unless the state says their task failed. ``names`` maps task ids to function names
    known beforehand (the owner's own tasks); the events name the others.
    """

    def __init__(self, object_ids: list, names: dict | None = None, now: float | None = None):
        self.total = len(object_ids)
        self.tasks: dict = {}  # task id -> how many of the refs it returns
        self.puts = 0
        for oid in object_ids:
            if oid[TASK_ID_SIZE:] == b"\xff\xff":
                self.puts += 1
            else:
                task_id = oid[:TASK_ID_SIZE]
                self.tasks[task_id] = self.tasks.get(task_id, 0) + 1
        self.known_names = dict(names or {})
        self.ready_tasks: set = set()
        self.ended_tasks: dict = {}  # task id -> FINISHED or FAILED, as its record last said
        self.counts = dict.fromkeys(SEGMENTS, 0)
        self.counts[FINISHED] = self.puts
        self.counts[PENDING] = self.total - self.puts
        self.names: dict = {}  # function name -> refs behind it
        self.created = time.time() if now is None else now
        self.started = self.created  # the earliest submission seen (or when the bar was made)
        self.ended: float | None = None  # when the last ref became done

    # --- input ----------------------------------------------------------------------------------
    def mark_ready(self, object_ids) -> None:
        """Refs already available when the bar was made (their events may be gone)."""
        for oid in object_ids:
            self.ready_tasks.add(oid[:TASK_ID_SIZE])

    def update(self, state, now: float | None = None) -> bool:
        """Recount from ``state`` (a ``ClusterState``); True when anything shown changed."""
        now = time.time() if now is None else now
        counts = dict.fromkeys(SEGMENTS, 0)
        counts[FINISHED] = self.puts
        names: dict = {}
        started, last_end = self.started, None
        ended = self.ended_tasks
        for task_id, count in self.tasks.items():
            record = state.tasks.get(task_id)
            if record is not None and (record.state == FAILED or record.state == FINISHED):
                where = ended[task_id] = record.state  # kept: the feed may drop its records later
            elif task_id in ended:
                where = ended[task_id]
            elif task_id in self.ready_tasks:
                where = FINISHED
            elif record is not None and record.state == RUNNING:
                where = RUNNING
            else:
                where = PENDING
            counts[where] += count
            if record is not None and record.name != "?":
                self.known_names[task_id] = record.name
            name = self.known_names.get(task_id)
            if name:
                names[name] = names.get(name, 0) + count
            if record is not None:
                if record.submitted is not None and record.submitted < started:
                    started = record.submitted
                if record.ended is not None and (last_end is None or record.ended > last_end):
                    last_end = record.ended
        changed = counts != self.counts or names != self.names or started != self.started
        self.counts, self.names, self.started = counts, names, started
        if self.done >= self.total and self.ended is None:
            # Refs ready before the bar was made have no end time here: they ended by its creation.
            self.ended = max(last_end or self.created, self.started) if self.tasks else self.created
            changed = True
        return changed

    # --- derived figures --------------------------------------------------------------------------
    @property
    def done(self) -> int:
        return self.counts[FINISHED] + self.counts[FAILED]

    @property
    def finished(self) -> bool:
        return self.ended is not None

    def shares(self) -> dict:
        """Each segment's share of the bar, 0..1; they add up to 1 (an empty set reads as finished)."""
        if not self.total:
            return {segment: float(segment == FINISHED) for segment in SEGMENTS}
        return {segment: self.counts[segment] / self.total for segment in SEGMENTS}

    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0

    def elapsed(self, now: float | None = None) -> float:
        if self.ended is not None:
            return max(0.0, self.ended - self.started)
        return max(0.0, (time.time() if now is None else now) - self.started)

    def rate(self, now: float | None = None) -> float | None:
        """Refs done per second so far (None before the first one, or before any time passed)."""
        elapsed = self.elapsed(now)
        done = self.done - self.puts
        if done <= 0 or elapsed <= 0:
            return None
        return done / elapsed

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the rate so far (0 when done, None while there is no rate yet)."""
        if self.done >= self.total:
            return 0.0
        rate = self.rate(now)
        return None if rate is None else (self.total - self.done) / rate

    def title(self) -> str:
        """The function name(s) behind the refs, most refs first."""
        if not self.names:
            return "put" if self.puts and not self.tasks else "tasks"
        ordered = sorted(self.names, key=lambda name: (-self.names[name], name))
        shown = ", ".join(ordered[:MAX_NAMES])
        return shown + (f" and {len(ordered) - MAX_NAMES} more" if len(ordered) > MAX_NAMES else "")

    def detail(self) -> str:
        """``(3 failed, 2 running, 5 pending)``, naming only what is not zero."""
        parts = [f"{self.counts[segment]} {segment}" for segment in (FAILED, RUNNING, PENDING) if self.counts[segment]]
        return f" ({', '.join(parts)})" if parts else ""

    def line(self, now: float | None = None, width: int = 24) -> str:
        """One line of text: the terminal's bar (``#`` finished, ``!`` failed, ``>`` running)."""
        counts = f"{self.done}/{self.total}{self.detail()}"
        if self.finished:
            return f"{self.title()}: {counts} Finished in {fmt_duration(self.elapsed())}{_rate_text(self.rate())}"
        cells = _cells(self.shares(), width)
        bar = "".join(TEXT_SYMBOLS[segment] * cells[segment] for segment in SEGMENTS)
        eta = self.eta(now)
        return (
            f"{self.title()}: [{bar}] {self.percent():3.0f}% {counts} {fmt_duration(self.elapsed(now))}"
            f"{_rate_text(self.rate(now))}{'' if eta is None else ' ETA ' + fmt_duration(eta)}"
        )


def _rate_text(rate: float | None) -> str:
    if rate is None:
        return ""
    return f", {rate:,.0f} tasks/s" if rate >= 10 else f", {rate:.2g} tasks/s"


def _cells(shares: dict, width: int) -> dict:
    """Whole cells per segment adding up to ``width``; a segment that is not empty gets at least one
    (10 failed of 500 shows one ``!``, never none), the rest by largest remainder."""
    exact = {segment: shares[segment] * width for segment in SEGMENTS}
    cells = {segment: int(exact[segment]) for segment in SEGMENTS}
    for segment in SEGMENTS:
        if shares[segment] > 0 and cells[segment] == 0:
            cells[segment] = 1
    while sum(cells.values()) > width:
        largest = max(SEGMENTS, key=lambda segment: cells[segment])
        cells[largest] -= 1
    for segment in sorted(SEGMENTS, key=lambda s: exact[s] - int(exact[s]), reverse=True):
        if sum(cells.values()) >= width:
            break
        cells[segment] += 1
    return cells


def fmt_duration(seconds: float) -> str:
    """``850 ms``, ``12.3 s``, ``4m 05s``, ``2h 03m``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def progress_html(model: ProgressModel, now: float | None = None) -> str:
    """The bar as HTML: four proportional segments, then percentage, counts, time, rate and ETA.

    Numbers carry class names (``ember-progress-finished``, ...) that tests and the browser check
    read back; colours are JupyterLab's theme variables, with fallbacks for other pages."""
    shares = model.shares()
    segments = "".join(
        f"<div class='ember-progress-segment ember-progress-seg-{segment}' title='{model.counts[segment]} {segment}' "
        f"style='width:{shares[segment] * 100:.2f}%;background:{SEGMENT_COLOURS[segment]};height:100%'></div>"
        for segment in SEGMENTS
        if shares[segment] > 0
    )
    counts = " · ".join(
        f"<span class='ember-progress-{segment}'>{model.counts[segment]}</span> {segment}"
        for segment in SEGMENTS
        if model.counts[segment] or segment == FINISHED
    )
    if model.finished:
        timing = f"<span class='ember-progress-final'>Finished in {fmt_duration(model.elapsed())}</span>"
        timing += html.escape(_rate_text(model.rate()))
    else:
        eta = model.eta(now)
        timing = f"<span class='ember-progress-elapsed'>{fmt_duration(model.elapsed(now))}</span>"
        timing += html.escape(_rate_text(model.rate(now)))
        if eta is not None:
            timing += f", ETA <span class='ember-progress-eta'>{fmt_duration(eta)}</span>"
    font = "font-family:var(--jp-ui-font-family, sans-serif);font-size:var(--jp-ui-font-size1, 13px)"
    return (
        f"<div class='ember-progress' style='{font};color:var(--jp-ui-font-color1, #111827)'>"
        f"<div style='display:flex;gap:8px;align-items:baseline;white-space:nowrap'>"
        f"<b class='ember-progress-title'>{html.escape(model.title())}</b>"
        f"<span class='ember-progress-percent'>{model.percent():.0f}%</span>"
        f"<span class='ember-progress-count'>{model.done} / {model.total}</span></div>"
        "<div class='ember-progress-bar' style='display:flex;width:100%;max-width:480px;height:12px;"
        "border-radius:3px;overflow:hidden;border:1px solid var(--jp-border-color2, #d1d5db);"
        f"background:var(--jp-layout-color2, #f3f4f6)'>{segments}</div>"
        f"<div style='color:var(--jp-ui-font-color2, #4b5563);white-space:nowrap'>{counts}; {timing}</div></div>"
    )
