"""How an experiment shows itself: in a notebook one live widget (a trial table with status,
config, iterations, latest and best metric, the best trial highlighted; bokeh curves of the metric
per trial, on ``LiveMetrics``); elsewhere a compact summary line at most every few seconds and one
at the end. ``TrialTable`` is the plain model both read. A view that fails is switched off with a
warning: a display must never break the experiment it shows."""

import html
import sys
import time
import warnings

from ember.train.progress import _fmt, _number, in_kernel

PREFIX = "ember.tune: "
SUMMARY_EVERY_S = 5.0
ORDER = ("RUNNING", "PENDING", "PAUSED", "TERMINATED", "ERROR")


def _short(config: dict, limit: int = 60) -> str:
    def flat(values, prefix=""):
        for key, value in values.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}/")
            else:
                yield f"{prefix}{key}={_fmt(value) if _number(value) else value}"

    text = ", ".join(flat(config))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _last_line(text, limit: int = 200):
    """The line of a traceback that says what went wrong (its last non-empty one), shortened."""
    if not text:
        return None
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    if not lines:
        return None
    return lines[-1] if len(lines[-1]) <= limit else lines[-1][: limit - 1] + "…"


class TrialTable:
    """The experiment as shown: one row per trial."""

    def __init__(self, name: str, metric=None, mode=None, clock=time.monotonic):
        self.name = name
        self.metric = metric
        self.mode = mode
        self.clock = clock
        self.started = clock()
        self.rows: dict = {}  # trial name -> dict
        self.ending: str | None = None
        self.failed = False

    def update(self, trial) -> None:
        last = trial.last_result
        metric = self.metric
        self.rows[trial.name] = {
            "trial": trial.name,
            "status": trial.status,
            "config": _short(trial.config),
            "iter": trial.iteration,
            "latest": last.get(metric) if metric else None,
            "best": trial.best.get(metric) if metric else None,
            "error": trial.error_type,
            "message": _last_line(trial.error) if trial.status == "ERROR" else None,
        }

    def ordered(self) -> list:
        """The rows as shown: by the metric's best value, best first (those without one after, in
        the order the trials came); without a metric and mode, in the order the trials came."""
        rows = list(self.rows.values())
        if not self.metric or self.mode not in ("min", "max"):
            return rows
        scored = [row for row in rows if _number(row["best"]) and row["best"] == row["best"]]
        rest = [row for row in rows if not (_number(row["best"]) and row["best"] == row["best"])]
        scored.sort(key=lambda row: row["best"], reverse=self.mode == "max")
        return scored + rest

    def best_trial(self):
        if not self.metric or self.mode not in ("min", "max"):
            return None
        ordered = self.ordered()
        return ordered[0]["trial"] if ordered and _number(ordered[0]["best"]) else None

    def counts(self) -> dict:
        out: dict = {}
        for row in self.rows.values():
            out[row["status"]] = out.get(row["status"], 0) + 1
        return out

    def summary(self) -> str:
        counts = self.counts()
        parts = [f"{counts[s]} {s.lower()}" for s in ORDER if counts.get(s)]
        best = self.best_trial()
        best_text = f" | best {self.metric}={_fmt(self.rows[best]['best'])} ({best})" if best else ""
        elapsed = self.clock() - self.started
        return f"{PREFIX}{self.name} {elapsed:.0f}s: {', '.join(parts) or 'no trials yet'}{best_text}"

    def finish(self, error=None, interrupted: bool = False, path: str = "") -> str:
        if interrupted:
            self.failed = True
            self.ending = f"interrupted: every trial stopped; Tuner.restore({path!r}, trainable) resumes it"
        elif error is not None:
            self.failed = True
            lines = str(error).strip().splitlines()
            self.ending = f"failed: {type(error).__name__}: {lines[-1][:300] if lines else ''}"
        else:
            self.ending = "finished"
        return f"{self.summary()} | {self.ending}"

    def html(self) -> str:
        best = self.best_trial()
        metric = self.metric or "metric"
        heads = ["trial", "status", "config", "iter", f"{metric} (latest)", f"{metric} (best)"]
        body = []
        for row in self.ordered():
            classes = ["ember-trial", f"ember-trial-{row['status'].lower()}"]
            if row["trial"] == best:
                classes.append("ember-trial-best")
            style = " style='font-weight:bold;background:#e8f5e9'" if row["trial"] == best else ""
            status = row["status"]
            if row["status"] == "ERROR" and (row["message"] or row["error"]):
                status += f" ({row['message'] or row['error']})"
            cells = [row["trial"], status, row["config"], row["iter"], row["latest"], row["best"]]
            body.append(
                f"<tr class='{' '.join(classes)}'{style}>"
                + "".join(f"<td>{html.escape(_fmt(c) if c is not None else '')}</td>" for c in cells)
                + "</tr>"
            )
        head = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
        status = self.ending or self.summary()[len(PREFIX) :]
        cls = "ember-disconnected" if self.failed else "ember-note"
        from ember.widgets.render import view

        return view(
            "tune",
            f"<table class='ember-metrics ember-tune'><tr>{head}</tr>{''.join(body)}</table>"
            f"<div class='{cls}'>{html.escape(status)}</div>",
        )


class TextReporter:
    """A summary line on stderr at most every ``every`` seconds, and one at the end."""

    def __init__(self, table: TrialTable, verbose: int = 1, stream=None, every: float = SUMMARY_EVERY_S):
        self.table = table
        self.verbose = verbose
        self.stream = stream
        self.every = every
        self.last = table.clock()

    def _write(self, line: str) -> None:
        if self.verbose:
            stream = self.stream if self.stream is not None else sys.stderr
            stream.write(line + "\n")
            stream.flush()

    def trial(self, trial) -> None:
        before = self.table.rows.get(trial.name, {}).get("status")
        self.table.update(trial)
        row = self.table.rows[trial.name]
        if row["status"] == "ERROR" and before != "ERROR":
            # An error is said at once, on its own line, not left to the next summary.
            self._write(f"{PREFIX}trial {trial.name} errored: {row['message'] or row['error'] or 'unknown error'}")
        now = self.table.clock()
        if now - self.last >= self.every:
            self.last = now
            self._write(self.table.summary())

    def result(self, trial, result) -> None:
        self.trial(trial)

    def finish(self, error=None, interrupted=False, path="") -> None:
        self._write(self.table.finish(error, interrupted, path))


class WidgetReporter(TextReporter):
    """The live widget, shown in the running cell when the first trial starts."""

    def __init__(self, table: TrialTable):
        super().__init__(table, verbose=0)
        self.widget = None
        self.handle = None
        self.broken = False

    def _guard(self, action) -> None:
        if self.broken:
            return
        try:
            action()
        except Exception as error:
            self.broken = True
            warnings.warn(f"ember.tune display switched off: {type(error).__name__}: {error}", stacklevel=3)

    def _show(self) -> None:
        if self.widget is None:
            from IPython.display import display

            self.widget = _make_widget(self.table)
            self.handle = display(self._bundle(), raw=True, display_id=True)
        self.widget.table.value = self.table.html()

    def trial(self, trial) -> None:
        self.table.update(trial)
        self._guard(self._show)

    def result(self, trial, result) -> None:
        self.table.update(trial)
        metric = self.table.metric
        values = (
            {metric: result[metric]}
            if metric and _number(result.get(metric))
            else {k: v for k, v in result.items() if _number(v) and k not in _AUTO}
        )

        def draw():
            self._show()
            self.widget.report(trial.name, training_iteration=result["training_iteration"], **values)

        self._guard(draw)

    def finish(self, error=None, interrupted=False, path="") -> None:
        self.table.finish(error, interrupted, path)
        if self.widget is not None:
            from ember.widgets import bokeh_js

            self._guard(bokeh_js.drop_from_outputs)
            self._guard(self._show)
            if self.handle is not None:
                self._guard(lambda: self.handle.update(self._bundle(), raw=True))

    def _bundle(self) -> dict:
        from ember.widgets.render import STYLE

        data = dict(self.widget._repr_mimebundle_() or {})
        data["text/html"] = STYLE + "<b>" + html.escape(self.table.name) + "</b>" + self.table.html()
        data["text/plain"] = "Ember Tune experiment (live in JupyterLab): " + (self.table.ending or "running")
        return data


_AUTO = {"training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "pid", "done"}


def _make_widget(table: TrialTable):
    import ipywidgets as w

    from ember.widgets.metrics import LiveMetrics
    from ember.widgets.render import STYLE

    class TuneWidget(LiveMetrics):
        """LiveMetrics whose table is the experiment's trial table, with a curve per trial."""

        def _render_table(self) -> None:
            self.table.value = table.html()

    widget = TuneWidget(x="training_iteration", title=table.name)
    widget.children = [w.HTML(STYLE), *widget.children]
    return widget


def reporter(name: str, metric=None, mode=None, verbose: int = 1):
    table = TrialTable(name, metric, mode)
    return WidgetReporter(table) if in_kernel() else TextReporter(table, verbose=verbose)
