"""The base for tune's and train's live views: a trial/worker table and line plots of metrics.

``MetricHistory`` (plain) keeps what was reported; ``LiveMetrics`` shows it: an HTML table of each
trial's latest values and one bokeh figure per metric (through jupyter_bokeh), with one line per
trial. New points are *streamed* into the plots' data sources, so a plot is appended to, never
redrawn, however long the run.
"""

import html
import threading

import ipywidgets as w

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


class MetricHistory:
    """Reported metrics per trial (or worker), in order; a plain class."""

    def __init__(self, x: str = "step"):
        self.x = x
        self.rows: dict = {}  # trial -> list of reported dicts
        self.status: dict = {}
        self.metrics: list = []  # metric names in the order first seen

    def report(self, trial: str, values: dict) -> dict:
        """Record one report; returns the point with its x filled in (the report's index by default)."""
        history = self.rows.setdefault(trial, [])
        point = dict(values)
        point.setdefault(self.x, len(history))
        history.append(point)
        for name in point:
            if name != self.x and name not in self.metrics and _is_number(point[name]):
                self.metrics.append(name)
        return point

    def table(self) -> list:
        """One row per trial: trial, status, reports so far, and the latest value of each metric."""
        return [
            {"trial": trial, "status": self.status.get(trial, "running"), "reports": len(rows), **rows[-1]}
            for trial, rows in self.rows.items()
        ]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class LiveMetrics(w.VBox):
    """A live table of trials and bokeh line plots of their metrics; call ``report`` as results come.

    ``metrics`` names the metrics to plot (default: every numeric one, as first reported).
    """

    def __init__(self, metrics=None, x: str = "step", title: str = "", **kwargs):
        from ember.widgets import bokeh_js

        # Now, in the cell that makes the widget: the plots are made later, as the first reports
        # come, often on another thread while a later cell runs, and BokehJS published then would
        # land in that cell's output.
        reloader = bokeh_js.reloader()  # and for a reloaded page (None outside a kernel)
        self.history = MetricHistory(x)
        self.wanted = list(metrics) if metrics else None
        self.lock = threading.Lock()
        self.table = w.HTML()
        self.plots = w.VBox()
        self.figures: dict = {}  # metric -> bokeh figure
        self.sources: dict = {}  # (metric, trial) -> ColumnDataSource
        self.labels: dict = {}  # trial -> its legend label, where it is not the trial's own name
        self.models: list = []
        heading = [w.HTML(f"<b>{html.escape(title)}</b>")] if title else []
        loader = [reloader] if reloader is not None else []
        super().__init__(children=[*heading, self.table, *loader, self.plots], **kwargs)
        self._render_table()

    def report(self, trial, **values) -> None:
        """Append one report of ``trial`` (a name or id): the table row changes, the plots grow."""
        trial = str(trial)
        with self.lock:
            point = self.history.report(trial, values)
            for metric in self.history.metrics:
                if (self.wanted is None or metric in self.wanted) and metric in point:
                    self._source(metric, trial).stream({"x": [point[self.history.x]], "y": [point[metric]]})
            self._render_table()

    def set_status(self, trial, status: str) -> None:
        """Mark a trial (e.g. "TERMINATED", "ERROR"); shown in the table."""
        with self.lock:
            self.history.status[str(trial)] = status
            self._render_table()

    def _source(self, metric: str, trial: str):
        source = self.sources.get((metric, trial))
        if source is not None:
            return source
        from bokeh.models import ColumnDataSource

        figure = self.figures.get(metric) or self._figure(metric)
        colour = PALETTE[len([key for key in self.sources if key[0] == metric]) % len(PALETTE)]
        source = self.sources[(metric, trial)] = ColumnDataSource({"x": [], "y": []})
        figure.line(
            "x", "y", source=source, legend_label=self.labels.get(trial, trial), line_color=colour, line_width=2
        )
        return source

    def _figure(self, metric: str):
        from bokeh.plotting import figure
        from jupyter_bokeh import BokehModel

        plot = figure(
            title=metric, height=220, width=420, x_axis_label=self.history.x, tools="pan,wheel_zoom,reset,hover"
        )
        self.figures[metric] = plot
        model = BokehModel(plot)
        self.models.append(model)
        self.plots.children = [*self.plots.children, model]
        return plot

    def _render_table(self) -> None:
        rows = self.history.table()
        names = ["trial", "status", "reports", self.history.x, *self.history.metrics]
        head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
        body = "".join(
            "<tr class='ember-trial'>"
            + "".join(f"<td>{html.escape(_fmt(row.get(n, '')))}</td>" for n in names)
            + "</tr>"
            for row in rows
        )
        self.table.value = f"<table class='ember-metrics'><tr>{head}</tr>{body}</table>"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
