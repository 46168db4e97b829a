"""The learning curves of an RLlib algorithm's Tune trials, shown in a notebook beside Tune's trial table.

Inside a trial the algorithm's own live view is off (it would only print in the trial's actor). The
results reach the driver anyway, so the Tuner's display is wrapped here: every call goes on to Tune's
own display unchanged, and each result of a trial is appended to one ``TrainingView`` (ember.rllib's
widget for ``algo.train()`` loops) as that trial's series: episode return mean against env steps, one
line per trial labelled with the trial's name and its searched settings, and a table row per trial with
the latest iteration, env steps, returns, throughput and learner losses. Outside a notebook nothing is
added (Tune's summary lines are enough); ``RunConfig(verbose=0)`` turns it off.
"""

from ember.tune.search import sample

LABEL_LIMIT = 60


def searched_paths(param_space: dict) -> list:
    """The settings the Tuner searches (grid searches and sampled domains), as key paths."""
    return [path for path, _ in sample.walk(param_space or {})]


def trial_label(name: str, config: dict, paths: list) -> str:
    """``PPO_1a2b3_00000 (lr=0.001)``: a trial's name with the values of its searched settings."""
    values = []
    for path in paths:
        node = config
        for part in path:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                break
        else:
            key = "/".join(map(str, path))
            values.append(f"{key}={node:.4g}" if isinstance(node, float) else f"{key}={node}")
    if not values:
        return name
    text = ", ".join(values)
    return f"{name} ({text if len(text) <= LABEL_LIMIT else text[: LABEL_LIMIT - 1] + '…'})"


class AlgorithmCurves:
    """Tune's display for an experiment of algorithms: ``inner`` (Tune's own) plus the curve view.

    The Tuner calls ``trial(trial)`` when a trial changes state, ``result(trial, result)`` per result
    and ``finish(...)`` once; a failing curve view is switched off with a warning, never the experiment.
    """

    def __init__(self, inner, name: str, param_space: dict):
        from ember.rllib.progress import WidgetReporter

        self.inner = inner
        self.paths = searched_paths(param_space)
        self.curves = WidgetReporter(name, band=False, title=f"{name}: episode return per trial")
        self.labels: dict = {}  # trial name -> label, fixed at its first result (PBT may change the config)

    @property
    def view(self):
        """The ``TrainingView`` (None until the first trial starts)."""
        return self.curves.view

    def trial(self, trial) -> None:
        self.inner.trial(trial)
        self.curves.show()
        self.curves.set_status(trial.name, trial.status)

    def result(self, trial, result) -> None:
        self.inner.result(trial, result)
        label = self.labels.setdefault(trial.name, trial_label(trial.name, trial.config, self.paths))
        self.curves.report(result, series=trial.name, label=label)
        self.curves.set_status(trial.name, trial.status)

    def finish(self, error=None, interrupted=False, path="") -> None:
        self.inner.finish(error=error, interrupted=interrupted, path=path)
        self.curves.close()

    @property
    def table(self):
        """Tune's trial table (the inner display's model)."""
        return self.inner.table


def wrap(display, name: str, param_space: dict, verbose: int = 1):
    """``display`` with the algorithms' curve view added, in a Jupyter kernel with ``verbose`` on;
    ``display`` itself elsewhere."""
    from ember.rllib.progress import in_kernel

    if not verbose or not in_kernel():
        return display
    return AlgorithmCurves(display, name, param_space)
