"""Training progress: one live widget in a notebook, one compact line per iteration elsewhere.

RLlib prints nothing per ``train()`` call, and under Tune pages of tables. Here every ``train()``
of an algorithm feeds the same view: in a notebook a ``LiveMetrics`` table (iteration, env steps,
returns, throughput, learner losses) and a bokeh curve of the episode return (mean, with the
min-max band) against env steps, appended to as iterations come; outside, one line per iteration
on stderr. ``config.reporting(progress=False)`` turns both off.
"""

import html
import math
import sys

from ember.rllib.utils import metrics as M

PREFIX = "ember.rllib: "
X = "env_steps"
TABLE_METRICS = ("return_mean", "return_min", "return_max", "steps_per_s", "policy_loss", "vf_loss", "entropy")


def table_point(result: dict) -> dict:
    """The figures of one result the table and the curve show (NaN ones left out)."""
    runners = result.get(M.ENV_RUNNER_RESULTS, {})
    learners = result.get(M.LEARNER_RESULTS, {})
    # Multi-agent results have one entry per module: show "default_policy"'s, else the first one's.
    modules = [k for k in learners if k != M.ALL_MODULES]
    learner = learners.get(M.DEFAULT_MODULE_ID) or (learners[modules[0]] if modules else {})
    point = {
        X: result.get(M.NUM_ENV_STEPS_SAMPLED_LIFETIME, 0),
        "iter": result.get("training_iteration", 0),
        "return_mean": runners.get(M.EPISODE_RETURN_MEAN),
        "return_min": runners.get(M.EPISODE_RETURN_MIN),
        "return_max": runners.get(M.EPISODE_RETURN_MAX),
        "steps_per_s": runners.get("num_env_steps_sampled_per_s"),
        "policy_loss": learner.get("policy_loss"),
        "vf_loss": learner.get("vf_loss"),
        "entropy": learner.get("entropy"),
        "qf_loss": learner.get("qf_loss"),
    }
    return {k: v for k, v in point.items() if isinstance(v, (int, float)) and not math.isnan(v)}


def summary_line(name: str, result: dict) -> str:
    """``ember.rllib: PPO CartPole-v1 iter 3 | 12,000 steps | return 45.2 [9, 120] | 9.1k steps/s | 1.20 s``."""
    point = table_point(result)
    parts = [f"{PREFIX}{name} iter {point.get('iter', 0)}", f"{point.get(X, 0):,} steps"]
    if "return_mean" in point:
        parts.append(f"return {point['return_mean']:.1f} [{point['return_min']:.0f}, {point['return_max']:.0f}]")
    else:
        parts.append("no episode ended yet")
    if "steps_per_s" in point:
        rate = point["steps_per_s"]
        parts.append(f"{rate / 1000:.1f}k steps/s" if rate >= 1000 else f"{rate:.0f} steps/s")
    for loss in ("policy_loss", "vf_loss", "qf_loss"):
        if loss in point:
            parts.append(f"{loss} {point[loss]:.3g}")
    parts.append(f"{result.get('time_this_iter_s', 0.0):.2f} s")
    evaluation = result.get(M.EVALUATION_RESULTS, {}).get(M.ENV_RUNNER_RESULTS, {})
    if M.EPISODE_RETURN_MEAN in evaluation:
        parts.append(f"eval return {evaluation[M.EPISODE_RETURN_MEAN]:.1f}")
    return " | ".join(parts)


class TextReporter:
    """A line per iteration on ``stream`` (stderr by default)."""

    def __init__(self, name: str, stream=None):
        self.name = name
        self.stream = stream

    def report(self, result: dict) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        stream.write(summary_line(self.name, result) + "\n")
        stream.flush()

    def close(self) -> None:
        pass


def curve_svg(points: list, width: int = 420, height: int = 160) -> str:
    """An inline SVG of the return curve for a saved notebook: ``points`` are (env steps, mean, min,
    max); the mean is a line over a shaded min-max band, axes labelled with their ranges."""
    return curves_svg({"": points}, width, height)


def curves_svg(series: dict, width: int = 420, height: int = 160, band: bool = True) -> str:
    """``curve_svg`` for several runs (Tune's trials): ``series`` maps a label to its points, each run
    one colour (the live plot's), with a legend of the labels below the plot when there is more than one."""
    from ember.widgets.metrics import PALETTE

    clean = {label: [p for p in points if all(v == v for v in p)] for label, points in series.items()}
    clean = {label: points for label, points in clean.items() if points}  # NaN: no episode ended yet
    every = [p for points in clean.values() for p in points]
    if len(every) < 2:
        return ""
    xs = [p[0] for p in every]
    low = min(p[2] if band else p[1] for p in every)
    high = max(p[3] if band else p[1] for p in every)
    x0, x1 = min(xs), max(xs)
    span_x, span_y = (x1 - x0) or 1, (high - low) or 1
    pad = 28
    legend = [label for label in clean if label] if len(clean) > 1 else []
    total = height + 14 * len(legend)

    def xy(x, y):
        px = pad + (x - x0) / span_x * (width - pad - 6)
        py = height - pad - (y - low) / span_y * (height - pad - 8)
        return f"{px:.1f},{py:.1f}"

    shapes = []
    for index, points in enumerate(clean.values()):
        colour = PALETTE[index % len(PALETTE)]
        if band:
            outline = [xy(p[0], p[3]) for p in points] + [xy(p[0], p[2]) for p in reversed(points)]
            shapes.append(f"<polygon points='{' '.join(outline)}' fill='{colour}' fill-opacity='0.2'/>")
        line = " ".join(xy(p[0], p[1]) for p in points)
        shapes.append(f"<polyline points='{line}' fill='none' stroke='{colour}' stroke-width='2'/>")
    for index, label in enumerate(legend):
        colour = PALETTE[list(clean).index(label) % len(PALETTE)]
        y = height + 14 * index + 10
        shapes.append(
            f"<rect x='{pad}' y='{y - 8}' width='10' height='3' fill='{colour}'/>"
            f"<text x='{pad + 14}' y='{y}' font-size='10'>{html.escape(label)}</text>"
        )
    return (
        f"<svg class='ember-rl-curve' width='{width}' height='{total}' xmlns='http://www.w3.org/2000/svg'>"
        + "".join(shapes)
        + f"<text x='{pad}' y='{height - 8}' font-size='10'>{x0:,.0f}</text>"
        f"<text x='{width - 6}' y='{height - 8}' font-size='10' text-anchor='end'>{x1:,.0f} env steps</text>"
        f"<text x='2' y='12' font-size='10'>{high:.0f}</text>"
        f"<text x='2' y='{height - pad}' font-size='10'>{low:.0f}</text></svg>"
    )


def _training_view_class():
    from ember.widgets.metrics import PALETTE, LiveMetrics

    class TrainingView(LiveMetrics):
        """LiveMetrics with the return curve drawn as mean line over a min-max band, one line (and
        band, with ``band``) per series: the algorithm's own, or each Tune trial's."""

        def __init__(self, name: str, band: bool = True, title: str | None = None):
            super().__init__(metrics=["return_mean"], x=X, title=title or f"{name}: training")
            self.name = name
            self.title = title or f"{name}: training"
            self.show_band = band
            self.bands: dict = {}  # series -> ColumnDataSource of its min-max band

        @property
        def band(self):
            """The band of the algorithm's own series (``name``)."""
            return self.bands.get(self.name)

        def report_result(self, result: dict, series: str | None = None, label: str | None = None) -> None:
            """Append one ``train()`` result to ``series`` (default: ``name``), its legend ``label``."""
            series = self.name if series is None else str(series)
            if label is not None:
                self.labels.setdefault(series, label)  # before its line exists: bokeh's legend is set once
            point = table_point(result)
            self.report(series, **point)
            if self.show_band and "return_min" in point and "return_max" in point:
                self._band(series).stream(
                    {"x": [point[X]], "low": [point["return_min"]], "high": [point["return_max"]]}
                )

        def _band(self, series: str):
            if series not in self.bands:
                from bokeh.models import ColumnDataSource

                lines = [key[1] for key in self.sources if key[0] == "return_mean"]
                colour = PALETTE[lines.index(series) % len(PALETTE)] if series in lines else PALETTE[0]
                self.bands[series] = ColumnDataSource({"x": [], "low": [], "high": []})
                self.figures["return_mean"].varea(
                    "x", "low", "high", source=self.bands[series], fill_alpha=0.2, fill_color=colour
                )
            return self.bands[series]

        def snapshot_html(self) -> str:
            """The table and the return curves as static HTML (what a saved notebook shows)."""
            series = {}
            for name, rows in self.history.rows.items():
                series[self.labels.get(name, name)] = [
                    (
                        r[X],
                        r["return_mean"],
                        r.get("return_min", r["return_mean"]),
                        r.get("return_max", r["return_mean"]),
                    )
                    for r in rows
                    if "return_mean" in r
                ]
            curve = curves_svg(series, band=self.show_band)
            return f"<div class='ember-rl'><b>{html.escape(self.title)}</b>{self.table.value}{curve}</div>"

    return TrainingView


def training_view(name: str, band: bool = True, title: str | None = None):
    """The live widget for the algorithm called ``name`` (call ``report_result(result)`` per iteration);
    several runs share one with ``report_result(result, series=...)``."""
    return _training_view_class()(name, band=band, title=title)


class WidgetReporter:
    """Shows one ``TrainingView`` in the cell of the first result (or ``show()``) and appends every
    result to it: the algorithm's own, or with ``series`` each Tune trial's."""

    def __init__(self, name: str, band: bool = True, title: str | None = None):
        self.name = name
        self.band = band
        self.title = title
        self.view = None
        self.handle = None
        self.last = None
        self.last_series = name
        self.broken = False

    def _bundle(self) -> dict:
        data = dict(self.view._repr_mimebundle_() or {})
        data["text/html"] = self.view.snapshot_html()
        data["text/plain"] = summary_line(self.last_series, self.last) if self.last is not None else self.name
        return data

    def _guard(self, action) -> None:
        if self.broken:
            return
        try:
            action()
        except Exception as exc:  # a display must never break the training it shows
            import warnings

            self.broken = True
            warnings.warn(f"ember.rllib progress view switched off: {type(exc).__name__}: {exc}", stacklevel=3)

    def _show(self) -> None:
        if self.view is None:
            from IPython.display import display

            self.view = training_view(self.name, band=self.band, title=self.title)
            # The widget lives in JupyterLab; the text/html snapshot (renewed by close()) is what
            # a saved notebook, nbviewer or GitHub shows.
            self.handle = display(self._bundle(), raw=True, display_id=True)

    def show(self) -> None:
        """Display the (empty) view now, in the running cell."""
        self._guard(self._show)

    def report(self, result: dict, series: str | None = None, label: str | None = None) -> None:
        def draw():
            self.last, self.last_series = result, self.name if series is None else str(series)
            if self.view is None:
                from IPython.display import display

                self.view = training_view(self.name, band=self.band, title=self.title)
                self.view.report_result(result, series, label)
                self.handle = display(self._bundle(), raw=True, display_id=True)
                return
            self.view.report_result(result, series, label)

        self._guard(draw)

    def set_status(self, series: str, status: str) -> None:
        if self.view is not None:
            self._guard(lambda: self.view.set_status(series, status))

    def close(self) -> None:
        if self.view is not None:
            if self.name in self.view.history.rows:
                self.view.set_status(self.name, "stopped")
            if self.handle is not None:
                try:
                    self.handle.update(self._bundle(), raw=True)
                except Exception:
                    pass  # the kernel's output channel is gone (shutting down)


def in_kernel() -> bool:
    """Whether this process is a Jupyter kernel (without importing IPython or ipywidgets)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def reporter(name: str):
    """A widget reporter in a Jupyter kernel, a text one elsewhere."""
    return WidgetReporter(name) if in_kernel() else TextReporter(name)
