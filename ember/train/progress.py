"""How a run shows itself: in a notebook, one live widget (a row per worker and bokeh curves of
the reported metrics, on ``LiveMetrics``), ending with the result's summary; elsewhere one compact
line per result on stderr. ``RunView`` is the plain model both read. A view that fails is switched
off with a warning: a display must never break the training it shows."""

import html
import sys
import time
import warnings

PREFIX = "ember.train: "


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def metrics_text(metrics: dict, limit: int = 6) -> str:
    shown = [(k, v) for k, v in metrics.items() if _number(v) or isinstance(v, str)][:limit]
    return " ".join(f"{k}={_fmt(v)}" for k, v in shown)


class RunView:
    """The state of a run as shown: the workers of the current attempt and the results so far."""

    def __init__(self, name: str, clock=time.monotonic):
        self.name = name
        self.clock = clock
        self.started = clock()
        self.attempt = 0
        self.workers: list = []  # dicts: rank, node, pid, state, reports, last
        self.results = 0
        self.first_index = self.results_before = 0
        self.last_metrics: dict = {}
        self.ending: str | None = None
        self.failed = False

    def start_attempt(self, attempt: int, infos: list, places: list, start_index: int = 0) -> None:
        self.attempt = attempt
        # Report indices are never reused after a failure; what is shown counts results instead.
        self.first_index, self.results_before = start_index, self.results
        self.workers = [
            {
                "rank": place.world_rank,
                "node": f"{info['address']} ({info['node_id'][:8]})",
                "pid": info["pid"],
                "state": "running",
                "reports": 0,
                "last": {},
            }
            for info, place in zip(infos, places)
        ]

    def worker_report(self, rank: int, metrics: dict) -> None:
        if rank < len(self.workers):
            row = self.workers[rank]
            row["reports"] += 1
            row["last"] = dict(metrics)

    def iteration(self, index: int) -> int:
        """The 1-based number of the result a report with ``index`` belongs to."""
        return self.results_before + index - self.first_index + 1

    def worker_state(self, rank: int, state: str) -> None:
        if rank < len(self.workers):
            self.workers[rank]["state"] = state

    def result(self, result) -> str:
        """Record a finished step; returns its compact line."""
        self.results += 1
        self.last_metrics = result.metrics
        checkpoint = f" | {result.checkpoint.path.rsplit('/', 1)[-1]}" if result.checkpoint is not None else ""
        return f"{PREFIX}{self.name} [{self.results}] {metrics_text(result.metrics)}{checkpoint}"

    def finish(self, error=None) -> str:
        elapsed = self.clock() - self.started
        attempts = f", {self.attempt} attempts" if self.attempt > 1 else ""
        if error is not None:
            self.failed = True
            first = str(error).strip().splitlines()
            last = first[-1].strip() if first else ""
            what = last if last.startswith(type(error).__name__) else f"{type(error).__name__}: {last}"
            self.ending = f"{self.name} failed after {elapsed:.1f} s{attempts}: {what[:300]}"
        else:
            self.ending = f"{self.name} finished in {elapsed:.1f} s{attempts}: {self.results} results, " + (
                metrics_text(self.last_metrics) or "no metrics reported"
            )
        for row in self.workers:
            if row["state"] == "running":
                row["state"] = "failed" if error is not None else "finished"
        return PREFIX + self.ending

    def html(self) -> str:
        names = []
        for row in self.workers:
            names += [
                k
                for k in row["last"]
                if k not in names and (_number(row["last"][k]) or isinstance(row["last"][k], str))
            ]
        names = names[:8]
        heads = ["rank", "node", "pid", "state", "reports", *names]
        body = "".join(
            "<tr class='ember-train-worker'>"
            + "".join(
                f"<td>{html.escape(_fmt(v))}</td>"
                for v in [row["rank"], row["node"], row["pid"], row["state"], row["reports"]]
                + [row["last"].get(n, "") for n in names]
            )
            + "</tr>"
            for row in self.workers
        )
        head = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
        status = self.ending or f"running, attempt {self.attempt}, {self.results} results"
        cls = "ember-disconnected" if self.failed else "ember-note"
        from ember.widgets.render import view

        return view(
            "train",
            f"<table class='ember-metrics ember-train'><tr>{head}</tr>{body}</table>"
            f"<div class='{cls}'>{html.escape(status)}</div>",
        )


class TextReporter:
    """One line per result on ``stream`` (stderr by default), and one at the end."""

    def __init__(self, view: RunView, stream=None, verbose: int = 1):
        self.view = view
        self.stream = stream
        self.verbose = verbose

    def _write(self, line: str) -> None:
        if self.verbose:
            stream = self.stream if self.stream is not None else sys.stderr
            stream.write(line + "\n")
            stream.flush()

    def start_attempt(self, attempt, infos, places, start_index=0) -> None:
        self.view.start_attempt(attempt, infos, places, start_index)
        if attempt > 1:
            self._write(f"{PREFIX}{self.view.name}: restarting the worker group (attempt {attempt})")

    def worker_report(self, rank, index, metrics) -> None:
        self.view.worker_report(rank, metrics)

    def worker_state(self, rank, state) -> None:
        self.view.worker_state(rank, state)

    def result(self, result) -> None:
        self._write(self.view.result(result))

    def finish(self, error=None) -> None:
        self._write(self.view.finish(error))


class WidgetReporter(TextReporter):
    """The live widget, shown in the running cell when the first attempt starts."""

    def __init__(self, view: RunView):
        super().__init__(view, verbose=0)
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
            warnings.warn(f"ember.train display switched off: {type(error).__name__}: {error}", stacklevel=3)

    def _redraw(self) -> None:
        self.widget.table.value = self.view.html()

    def start_attempt(self, attempt, infos, places, start_index=0) -> None:
        super().start_attempt(attempt, infos, places, start_index)
        self._guard(self._show_or_redraw)

    def _show_or_redraw(self) -> None:
        if self.widget is None:
            from IPython.display import display

            self.widget = _make_widget(self.view)
            self.handle = display(self._bundle(), raw=True, display_id=True)
        self._redraw()

    def worker_report(self, rank, index, metrics) -> None:
        super().worker_report(rank, index, metrics)
        numeric = {k: v for k, v in metrics.items() if _number(v) and k != "iteration"}

        def draw():
            self.widget.report(f"rank {rank}", iteration=self.view.iteration(index), **numeric)
            self._redraw()

        if self.widget is not None:
            self._guard(draw)

    def worker_state(self, rank, state) -> None:
        super().worker_state(rank, state)
        if self.widget is not None:
            self._guard(self._redraw)

    def result(self, result) -> None:
        self.view.result(result)

    def finish(self, error=None) -> None:
        self.view.finish(error)
        if self.widget is not None:
            from ember.widgets import bokeh_js

            # The page has run BokehJS by now: a saved notebook need not carry its 8 MB.
            self._guard(bokeh_js.drop_from_outputs)
            self._guard(self._redraw)
            if self.handle is not None:  # None outside a kernel's display machinery
                self._guard(lambda: self.handle.update(self._bundle(), raw=True))

    def _bundle(self) -> dict:
        from ember.widgets.render import STYLE

        data = dict(self.widget._repr_mimebundle_() or {})
        data["text/html"] = STYLE + "<b>" + html.escape(self.view.name) + "</b>" + self.view.html()
        data["text/plain"] = "Ember training run (live in JupyterLab): " + (self.view.ending or "running")
        return data


def _make_widget(view: RunView):
    import ipywidgets as w

    from ember.widgets.metrics import LiveMetrics
    from ember.widgets.render import STYLE

    class TrainWidget(LiveMetrics):
        """LiveMetrics whose table is a row per worker (the run's own), with curves per rank."""

        def _render_table(self) -> None:
            self.table.value = view.html()

    widget = TrainWidget(x="iteration", title=view.name)
    widget.children = [w.HTML(STYLE), *widget.children]
    return widget


def in_kernel() -> bool:
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def reporter(name: str, verbose: int = 1):
    view = RunView(name)
    return WidgetReporter(view) if in_kernel() else TextReporter(view, verbose=verbose)
