"""``Result``: what ``Trainer.fit()`` returns."""

from dataclasses import dataclass, field

from ember.util.nested import flatten


@dataclass
class Result:
    """The outcome of a run: the last reported ``metrics`` (rank 0's), the latest ``checkpoint``,
    the kept ``best_checkpoints`` as (checkpoint, metrics) pairs, the run's directory ``path`` and,
    when it failed, ``error`` (the user's exception, with the remote traceback in its message)."""

    metrics: dict | None
    checkpoint: object
    error: BaseException | None
    path: str
    best_checkpoints: list = field(default_factory=list)
    metrics_history: list = field(default_factory=list)
    filesystem: object = None

    @property
    def metrics_dataframe(self):
        """Every reported result (rank 0's metrics) as a pandas DataFrame, one row per report; nested
        metrics (RLlib's results, the trial's config) are columns named by slash-joined keys."""
        import pandas as pd

        return pd.DataFrame([flatten(m) for m in self.metrics_history])

    @property
    def config(self) -> dict | None:
        return (self.metrics or {}).get("config")

    def __repr__(self):
        shown = {k: v for k, v in (self.metrics or {}).items() if k != "config"}
        error = f", error={type(self.error).__name__}" if self.error is not None else ""
        return f"Result(metrics={shown}, path={self.path!r}, checkpoint={self.checkpoint}{error})"
