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
    points = [p for p in points if all(v == v for v in p)]  # drop NaN (no episode ended yet)
    if len(points) < 2:
        return ""
    xs = [p[0] for p in points]
    low, high = min(p[2] for p in points), max(p[3] for p in points)
    x0, x1 = min(xs), max(xs)
    span_x, span_y = (x1 - x0) or 1, (high - low) or 1
    pad = 28

    def xy(x, y):
        px = pad + (x - x0) / span_x * (width - pad - 6)
        py = height - pad - (y - low) / span_y * (height - pad - 8)
        return f"{px:.1f},{py:.1f}"

    band = " ".join(xy(p[0], p[3]) for p in points) + " " + " ".join(xy(p[0], p[2]) for p in reversed(points))
    line = " ".join(xy(p[0], p[1]) for p in points)
    return (
        f"<svg class='ember-rl-curve' width='{width}' height='{height}' xmlns='http://www.w3.org/2000/svg'>"
        f"<polygon points='{band}' fill='#1f77b4' fill-opacity='0.2'/>"
        f"<polyline points='{line}' fill='none' stroke='#1f77b4' stroke-width='2'/>"
        f"<text x='{pad}' y='{height - 8}' font-size='10'>{x0:,.0f}</text>"
        f"<text x='{width - 6}' y='{height - 8}' font-size='10' text-anchor='end'>{x1:,.0f} env steps</text>"
        f"<text x='2' y='12' font-size='10'>{high:.0f}</text>"
        f"<text x='2' y='{height - pad}' font-size='10'>{low:.0f}</text></svg>"
    )


def _training_view_class():
    from ember.widgets.metrics import LiveMetrics

    class TrainingView(LiveMetrics):
        """LiveMetrics with the return curve drawn as mean line over a min-max band."""

        def __init__(self, name: str):
            super().__init__(metrics=["return_mean"], x=X, title=f"{name}: training")
            self.name = name
            self.band = None

        def report_result(self, result: dict) -> None:
            point = table_point(result)
            self.report(self.name, **point)
            if "return_min" in point and "return_max" in point:
                self._band().stream({"x": [point[X]], "low": [point["return_min"]], "high": [point["return_max"]]})

        def _band(self):
            if self.band is None:
                from bokeh.models import ColumnDataSource

                figure = self.figures["return_mean"]
                self.band = ColumnDataSource({"x": [], "low": [], "high": []})
                figure.varea("x", "low", "high", source=self.band, fill_alpha=0.2, legend_label="min-max")
            return self.band

        def snapshot_html(self) -> str:
            """The table and the return curve as static HTML (what a saved notebook shows)."""
            rows = self.history.rows.get(self.name, [])
            points = [
                (r[X], r["return_mean"], r["return_min"], r["return_max"])
                for r in rows
                if "return_mean" in r and "return_min" in r and "return_max" in r
            ]
            title = html.escape(f"{self.name}: training")
            return f"<div class='ember-rl'><b>{title}</b>{self.table.value}{curve_svg(points)}</div>"

    return TrainingView


def training_view(name: str):
    """The live widget for the algorithm called ``name`` (call ``report_result(result)`` per iteration)."""
    return _training_view_class()(name)


class WidgetReporter:
    """Shows one ``TrainingView`` in the cell of the first ``train()`` and appends every result to it."""

    def __init__(self, name: str):
        self.name = name
        self.view = None
        self.handle = None
        self.last = None
        self.broken = False

    def _bundle(self) -> dict:
        data = dict(self.view._repr_mimebundle_() or {})
        data["text/html"] = self.view.snapshot_html()
        data["text/plain"] = summary_line(self.name, self.last) if self.last is not None else self.name
        return data

    def report(self, result: dict) -> None:
        if self.broken:
            return
        try:
            self.last = result
            if self.view is None:
                from IPython.display import display

                self.view = training_view(self.name)
                self.view.report_result(result)
                # The widget lives in JupyterLab; the text/html snapshot (renewed by close()) is what
                # a saved notebook, nbviewer or GitHub shows.
                self.handle = display(self._bundle(), raw=True, display_id=True)
                return
            self.view.report_result(result)
        except Exception as exc:  # a display must never break the training it shows
            import warnings

            self.broken = True
            warnings.warn(f"ember.rllib progress view switched off: {type(exc).__name__}: {exc}", stacklevel=2)

    def close(self) -> None:
        if self.view is not None:
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
