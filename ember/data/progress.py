"""The progress of one execution: a live widget in a notebook, a few compact log lines elsewhere.

Ray Data draws multi-line tqdm bars, which a notebook shows as pages of broken text. Here each
consumption of a Dataset (iter_batches, take_all, count, materialize, write_*...) gets one widget:
a row per operator with rows and blocks done, throughput, tasks and pool actors active, store bytes
in flight and whether the budget holds it back; it ends with the totals. Outside a kernel the same
figures go to stderr as at most one progress line every ``TEXT_PERIOD`` seconds and, at the end, one
line per operator and a "Finished in" line.

No polling: the executor calls ``update`` after each scheduling pass and ``finish`` once; the
reporter draws at most every ``period`` seconds. ``ExecutionProgress`` is the plain model (no I/O,
an injectable clock) that both views read. ``DataContext.enable_progress_bars = False`` turns it
all off.
"""

import html
import sys
import time
import warnings
from dataclasses import dataclass

WIDGET_PERIOD = 0.25  # seconds between two redraws of the widget
TEXT_PERIOD = 5.0  # seconds between two progress lines outside a notebook
PREFIX = "ember.data: "


@dataclass
class OpRow:
    """One operator's figures at one moment."""

    name: str
    rows: int = 0
    blocks: int = 0
    tasks: int = 0  # total launched
    tasks_active: int = 0
    actors_active: int = 0
    bytes_in_flight: int = 0
    throttled: bool = False  # held back by the budget in the last scheduling pass
    ever_throttled: bool = False
    done: bool = False


def op_rows(executor) -> list:
    """The operators of ``executor`` as ``OpRow``s, sources first (the executor's own order)."""
    rows = []
    for state in executor.states:
        stats = state.stats
        rows.append(
            OpRow(
                name=state.op.name,
                rows=stats.rows_out,
                blocks=stats.blocks_out,
                tasks=stats.tasks,
                tasks_active=len(state.running),
                actors_active=len(state.actors),
                bytes_in_flight=state.held_bytes(),
                throttled=state.throttled,
                ever_throttled=stats.throttled > 0,
                done=state.done(),
            )
        )
    return rows


class ExecutionProgress:
    """The model: the latest ``OpRow``s, when each operator finished, and how the execution ended."""

    def __init__(self, budget: int = 0, clock=time.monotonic, started: float | None = None, name: str | None = None):
        self.clock = clock
        self.name = name  # the dataset's, from Dataset.set_name
        self.started = clock() if started is None else started
        self.budget = budget
        self.rows: list = []
        self.ended_at: dict = {}  # operator index -> when it was first seen done
        self.finished = False
        self.wall_seconds = 0.0
        self.error: str | None = None
        self.peak_bytes = 0
        self.now = self.started  # when the figures were taken: the views show them as of then

    def update(self, rows: list, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self.rows, self.now = rows, now
        for index, row in enumerate(rows):
            if row.done:
                self.ended_at.setdefault(index, now)
        self.peak_bytes = max(self.peak_bytes, sum(row.bytes_in_flight for row in rows))

    def finish(self, rows: list, wall_seconds: float, error: str | None = None, peak_bytes: int = 0) -> None:
        """The execution ended (``error`` says how it failed; None when it completed or the consumer
        stopped early)."""
        now = self.started + wall_seconds
        for index in range(len(rows)):
            self.ended_at.setdefault(index, now)
        self.rows = rows
        self.finished, self.wall_seconds, self.error = True, wall_seconds, error
        self.peak_bytes = max(self.peak_bytes, peak_bytes)

    def elapsed(self, now: float | None = None) -> float:
        if self.finished:
            return self.wall_seconds
        return (self.now if now is None else now) - self.started

    def throughput(self, index: int, now: float | None = None) -> float:
        """Rows per second the operator put out, over the time from the start until it finished."""
        end = self.ended_at.get(index)
        if end is None:
            end = self.started + self.elapsed(now)
        seconds = end - self.started
        return self.rows[index].rows / seconds if seconds > 0 else 0.0

    def state(self, index: int) -> str:
        row = self.rows[index]
        if row.done or self.finished:
            return "done"
        return "throttled" if row.throttled else "running"

    def output(self) -> tuple:
        """(rows, blocks) the last operator put out."""
        return (self.rows[-1].rows, self.rows[-1].blocks) if self.rows else (0, 0)

    # ---- text --------------------------------------------------------------------------------

    def line(self, now: float | None = None) -> str:
        """One progress line: every operator, compactly."""
        parts = []
        for index, row in enumerate(self.rows):
            part = f"{row.name}: {row.rows:,} rows, {row.blocks} blocks, {_rate(self.throughput(index, now))}"
            if row.tasks_active or row.actors_active:
                part += f", {row.tasks_active} tasks"
                if row.actors_active:
                    part += f"/{row.actors_active} actors"
            state = self.state(index)
            if state != "running":
                part += f" ({state})"
            parts.append(part)
        return f"{self._prefix()}running {self.elapsed(now):.1f} s | " + " | ".join(parts)

    def final_lines(self) -> list:
        """One line per operator, then how it ended."""
        lines = [
            f"{self._prefix()}{row.name}: {row.rows:,} rows, {row.blocks} blocks, {row.tasks} tasks, "
            f"{_rate(self.throughput(index))}" + (" (was throttled by the budget)" if row.ever_throttled else "")
            for index, row in enumerate(self.rows)
        ]
        lines.append(self._prefix() + self.ending())
        return lines

    def _prefix(self) -> str:
        return PREFIX if self.name is None else f"{PREFIX}{self.name}: "

    def ending(self) -> str:
        rows, blocks = self.output()
        if self.error is not None:
            # A task's error is several lines (the remote traceback): its first and its last say what.
            lines = [line.strip() for line in self.error.splitlines() if line.strip()]
            what = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
            return f"Failed after {self.wall_seconds:.2f} s ({what[:300]})"
        return (
            f"Finished in {self.wall_seconds:.2f} s: {rows:,} rows in {blocks} blocks out, "
            f"peak {_bytes(self.peak_bytes)} in flight of a {_bytes(self.budget)} budget"
        )

    # ---- HTML --------------------------------------------------------------------------------

    def html(self, now: float | None = None) -> str:
        """The widget's body: a table with a row per operator, then the totals once finished."""
        from ember.widgets.render import bar, table, view

        body = []
        for index, row in enumerate(self.rows):
            state = self.state(index)
            actors = f"{row.actors_active}" if row.actors_active else ""
            body.append(
                f"<tr class='ember-data-op'><td><code>{html.escape(row.name)}</code></td>"
                f"<td class='ember-num ember-data-rows'>{row.rows:,}</td>"
                f"<td class='ember-num ember-data-blocks'>{row.blocks}</td>"
                f"<td class='ember-num ember-data-rate'>{_rate(self.throughput(index, now))}</td>"
                f"<td class='ember-num ember-data-tasks'>{row.tasks_active}</td>"
                f"<td class='ember-num ember-data-actors'>{actors}</td>"
                f"<td>{bar('store', row.bytes_in_flight, self.budget, _bytes(row.bytes_in_flight))}</td>"
                f"<td class='ember-data-state ember-data-{state}'>{state}</td></tr>"
            )
        heads = ["operator", "rows", "blocks", "throughput", "tasks", "actors", "in store", "state"]
        numeric = ("rows", "blocks", "throughput", "tasks", "actors")
        if self.finished:
            cls = "ember-disconnected" if self.error is not None else "ember-data-finished"
            footer = f"<div class='{cls}'>{html.escape(self.ending())}</div>"
        else:
            footer = (
                f"<div class='ember-note'>running {self.elapsed(now):.1f} s, budget {_bytes(self.budget)} "
                f"of object store</div>"
            )
        title = "Dataset execution" if self.name is None else f"Dataset {html.escape(self.name)} execution"
        return view("data", f"<b>{title}</b>" + table(heads, body, "starting", numeric) + footer)


def _rate(rows_per_second: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if rows_per_second >= scale:
            return f"{rows_per_second / scale:.1f}{unit} rows/s"
    return f"{rows_per_second:.0f} rows/s"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"


# ---- reporters: what the executor calls --------------------------------------------------------


class _Reporter:
    """Feeds the model from the executor and draws at most every ``period`` seconds. A view that
    fails is switched off with a warning: a display must never break the data it shows."""

    period = WIDGET_PERIOD

    def __init__(self, clock=time.monotonic, name: str | None = None):
        self.clock = clock
        self.name = name
        self.model = None
        self.last_drawn = float("-inf")
        self.broken = False

    def update(self, executor) -> None:
        if self.broken:
            return
        now = self.clock()
        if self.model is None:
            self.model = ExecutionProgress(executor.stats.budget, clock=self.clock, started=now, name=self.name)
            self.last_drawn = self._first_draw(now)
        if now - self.last_drawn < self.period:
            return
        self.last_drawn = now
        self._guard(lambda: (self.model.update(op_rows(executor), now), self.draw(self.model)))

    def finish(self, executor, error: str | None) -> None:
        if self.broken or not executor.states:
            return
        if self.model is None:
            self.model = ExecutionProgress(executor.stats.budget, clock=self.clock, name=self.name)
        stats = executor.stats
        self._guard(
            lambda: (
                self.model.finish(op_rows(executor), stats.wall_seconds, error, stats.peak_bytes),
                self.close(self.model),
            )
        )

    def _guard(self, action) -> None:
        try:
            action()
        except Exception as exc:
            self.broken = True
            warnings.warn(f"ember.data progress display switched off: {type(exc).__name__}: {exc}", stacklevel=2)

    def _first_draw(self, now: float) -> float:
        return float("-inf")  # draw at once

    def draw(self, model: ExecutionProgress) -> None:
        raise NotImplementedError

    def close(self, model: ExecutionProgress) -> None:
        raise NotImplementedError


class TextReporter(_Reporter):
    """Compact lines on ``stream`` (stderr by default, as Ray's): nothing for the first
    ``TEXT_PERIOD`` seconds, then one line per period; at the end a line per operator."""

    period = TEXT_PERIOD

    def __init__(self, stream=None, clock=time.monotonic, name: str | None = None):
        super().__init__(clock, name)
        self.stream = stream

    def _first_draw(self, now: float) -> float:
        return now  # a short execution prints only its final lines

    def _write(self, lines: list) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        stream.write("".join(line + "\n" for line in lines))
        stream.flush()

    def draw(self, model: ExecutionProgress) -> None:
        self._write([model.line()])

    def close(self, model: ExecutionProgress) -> None:
        self._write(model.final_lines())


class WidgetReporter(_Reporter):
    """The live widget, displayed in the running cell when the execution starts; its output also
    carries a text/html snapshot (renewed at the end) for saved notebooks."""

    def __init__(self, clock=time.monotonic, name: str | None = None):
        super().__init__(clock, name)
        self.widget = None
        self.handle = None

    def draw(self, model: ExecutionProgress) -> None:
        if self.widget is None:
            self.widget = _make_widget()
            self.handle = _show(self.widget, model)
        self.widget.children[1].value = model.html()

    def close(self, model: ExecutionProgress) -> None:
        self.draw(model)
        if self.handle is not None:
            try:
                self.handle.update(_bundle(self.widget, model), raw=True)
            except Exception:
                pass  # the kernel's output channel is gone (shutting down)


def _make_widget():
    import ipywidgets as w

    from ember.widgets.render import STYLE

    # The stylesheet goes once, in a child of its own: each redraw sends only the table.
    return w.VBox([w.HTML(STYLE), w.HTML(layout=w.Layout(width="100%"))])


def _bundle(widget, model: ExecutionProgress) -> dict:
    from ember.widgets.render import STYLE

    data = dict(widget._repr_mimebundle_() or {})
    data["text/html"] = STYLE + model.html()
    rows, blocks = model.output()
    what = model.ending() if model.finished else f"running, {rows:,} rows in {blocks} blocks out so far"
    data["text/plain"] = f"Ember Dataset execution (live in JupyterLab): {what}"
    return data


def _show(widget, model: ExecutionProgress):
    from IPython.display import display

    return display(_bundle(widget, model), raw=True, display_id=True)


def in_kernel() -> bool:
    """Whether this process is a Jupyter kernel. The same test as ember.widgets.progress.in_kernel,
    without importing ipywidgets (a script's executions should not pay for it)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def reporter(ctx=None, name: str | None = None):
    """The progress reporter for one execution under ``ctx`` (the current DataContext by default):
    a widget in a kernel, text lines elsewhere, None when ``enable_progress_bars`` is off. ``name``:
    the dataset's (Dataset.set_name), shown in the title and the lines."""
    from ember.data.context import DataContext

    ctx = ctx or DataContext.get_current()
    if not ctx.enable_progress_bars:
        return None
    return WidgetReporter(name=name) if in_kernel() else TextReporter(name=name)
