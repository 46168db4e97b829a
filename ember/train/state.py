"""The fit controller's decisions, apart from any I/O: which reports make a finished training
step, which checkpoints to keep, and whether a failed attempt restarts. Plain classes; the
controller in ``trainer.py`` feeds them events and carries out what they return.

Every worker calls ``report`` the same number of times; the i-th calls of all workers make the
i-th *result* (Ray's semantics): its metrics are rank 0's, and its checkpoint the directory the
workers persisted for it (each worker's files merged into one directory).
"""

import math
import warnings
from dataclasses import dataclass, field

RESTART = "restart"
FAIL = "fail"


@dataclass
class TrainingResult:
    """One finished step: rank 0's metrics and the checkpoint reported with it (or None)."""

    index: int
    metrics: dict
    checkpoint: object = None
    deleted: list = field(default_factory=list)  # checkpoints this result made the keeper drop
    all_metrics: list = field(default_factory=list)  # every reporting worker's, by rank


class CheckpointKeeper:
    """The kept checkpoints by ``CheckpointConfig``: all of them, or the ``num_to_keep`` best by
    the score attribute (most recent without one), plus always the latest."""

    def __init__(self, config):
        self.config = config
        self.kept: list = []  # (index, checkpoint, metrics), in report order
        self.latest = None
        self.unscored: set = set()  # indices already warned about

    def add(self, index: int, checkpoint, metrics: dict) -> list:
        """Register a checkpoint; returns the checkpoints no longer kept (to delete)."""
        self.kept.append((index, checkpoint, metrics))
        self.latest = checkpoint
        keep = self.config.num_to_keep
        if keep is None or len(self.kept) <= keep:
            return []
        ranked = sorted(self.kept, key=self._score, reverse=True)
        survivors = {entry[0] for entry in ranked[:keep]} | {index}
        dropped = [entry[1] for entry in self.kept if entry[0] not in survivors]
        self.kept = [entry for entry in self.kept if entry[0] in survivors]
        return dropped

    def _score(self, entry) -> tuple:
        index, _, metrics = entry
        attribute = self.config.checkpoint_score_attribute
        if attribute is None:
            return (0.0, index)  # the most recent are the best
        value = metrics.get(attribute)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            if index in self.unscored:
                return (-math.inf, index)
            self.unscored.add(index)
            warnings.warn(
                f"checkpoint_score_attribute {attribute!r} is not a number in the metrics reported with "
                f"checkpoint {index}; it is ranked last.",
                stacklevel=3,
            )
            return (-math.inf, index)
        return (value if self.config.checkpoint_score_order == "max" else -value, index)

    def best(self) -> list:
        """Ray's ``Result.best_checkpoints``: (checkpoint, metrics) pairs, in report order."""
        return [(checkpoint, metrics) for _, checkpoint, metrics in self.kept]


class FitState:
    """Attempts, failures left, the reports of the current attempt and the results so far."""

    def __init__(self, world_size: int, max_failures: int, checkpoint_config, resume_checkpoint=None):
        if world_size < 1:
            raise ValueError(f"world_size must be at least 1, got {world_size}.")
        self.world_size = world_size
        self.max_failures = max_failures
        self.keeper = CheckpointKeeper(checkpoint_config)
        self.resume_checkpoint = resume_checkpoint
        self.attempt = 0
        self.failures = 0
        self.next_index = 0  # the index the next attempt's first report gets: never reused
        self.results: list = []  # TrainingResult, in order
        self.pending: dict = {}  # index -> {rank: (metrics, checkpoint or None)}
        self.done_ranks: set = set()
        self.errors: list = []

    # ---- the attempt ---------------------------------------------------------------------------

    def start_attempt(self) -> tuple:
        """Begin an attempt: returns (index of its first report, the checkpoint to start from)."""
        self.attempt += 1
        self.pending.clear()
        self.done_ranks.clear()
        return self.next_index, self.latest_checkpoint

    @property
    def latest_checkpoint(self):
        return self.keeper.latest if self.keeper.latest is not None else self.resume_checkpoint

    def on_report(self, rank: int, index: int, metrics: dict, checkpoint=None) -> list:
        """A worker reported; returns the results this completes (usually zero or one)."""
        self._check_rank(rank)
        if rank in self.done_ranks:
            raise ValueError(f"rank {rank} reported after it finished")
        self.next_index = max(self.next_index, index + 1)
        self.pending.setdefault(index, {})[rank] = (dict(metrics), checkpoint)
        return self._complete()

    def on_worker_done(self, rank: int) -> list:
        """A worker's loop returned; reports still waiting only for finished workers complete."""
        self._check_rank(rank)
        self.done_ranks.add(rank)
        return self._complete()

    @property
    def finished(self) -> bool:
        return len(self.done_ranks) == self.world_size

    def _complete(self) -> list:
        completed = []
        for index in sorted(self.pending):
            reports = self.pending[index]
            waiting = set(range(self.world_size)) - set(reports) - self.done_ranks
            if waiting:
                break  # results complete in order
            del self.pending[index]
            first = min(reports)  # rank 0's, unless rank 0 finished without this report
            metrics = reports[first][0]
            checkpoint = next((c for _, c in (reports[r] for r in sorted(reports)) if c is not None), None)
            result = TrainingResult(index, metrics, checkpoint, all_metrics=[reports[r][0] for r in sorted(reports)])
            if checkpoint is not None:
                result.deleted = self.keeper.add(index, checkpoint, metrics)
            self.results.append(result)
            completed.append(result)
        return completed

    def on_failure(self, error: BaseException) -> tuple:
        """The attempt failed: (RESTART or FAIL, checkpoints of its unfinished reports, to delete)."""
        self.errors.append(error)
        orphans = [c for reports in self.pending.values() for _, c in reports.values() if c is not None]
        orphans = list(dict.fromkeys(orphans))
        self.pending.clear()
        self.failures += 1
        allowed = self.max_failures == -1 or self.failures <= self.max_failures
        return (RESTART if allowed else FAIL), orphans

    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside the world of {self.world_size}")

    # ---- the outcome ---------------------------------------------------------------------------

    @property
    def metrics(self) -> dict:
        return self.results[-1].metrics if self.results else {}

    def history(self) -> list:
        return [result.metrics for result in self.results]


class ReportWatch:
    """Notices a loop that runs on without reporting: once ``after_s`` seconds have passed with
    some workers silent (no report since their attempt started, or since their last report),
    ``due`` names them, once per fit; the controller turns that into a warning. ``after_s`` None
    never warns."""

    def __init__(self, after_s: float | None, clock):
        if after_s is not None and (isinstance(after_s, bool) or not isinstance(after_s, (int, float)) or after_s <= 0):
            raise ValueError(f"the no-report warning delay must be a positive number of seconds, got {after_s!r}.")
        self.after_s = after_s
        self.clock = clock
        self.last: dict = {}  # rank -> when it last reported (or its attempt started)
        self.warned = False

    def start_attempt(self, ranks) -> None:
        now = self.clock()
        self.last = {rank: now for rank in ranks}

    def reported(self, rank: int) -> None:
        if rank in self.last:
            self.last[rank] = self.clock()

    def finished(self, rank: int) -> None:
        self.last.pop(rank, None)

    def timeout(self) -> float | None:
        """How long the controller may wait for the next event before asking ``due`` again."""
        if self.after_s is None or self.warned or not self.last:
            return None
        return max(0.0, min(self.last.values()) + self.after_s - self.clock())

    def due(self) -> list:
        """The silent ranks when it is time to warn (once), else []."""
        if self.after_s is None or self.warned:
            return []
        now = self.clock()
        silent = sorted(rank for rank, since in self.last.items() if now - since >= self.after_s)
        if silent:
            self.warned = True
        return silent
