"""Ray Train's configuration objects: how many workers, where results go, how faults and
checkpoints are handled. Each validates its arguments when made, so a mistake shows at the line
that made it rather than minutes into a run."""

import os
from dataclasses import dataclass, field

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
DEFAULT_STORAGE = "~/ember_results"


def _check_int(name: str, value, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}{' or None' if allow_none else ''}, got {value!r}.")


@dataclass
class ScalingConfig:
    """How many training workers and what each holds: ``num_workers`` actors, each with
    ``resources_per_worker`` (1 CPU by default, plus 1 GPU with ``use_gpu``), reserved together in
    one placement group with ``placement_strategy``."""

    num_workers: int = 1
    use_gpu: bool = False
    resources_per_worker: dict | None = None
    placement_strategy: str = "PACK"
    trainer_resources: dict | None = None  # accepted for Ray compatibility; the controller runs in the driver

    def __post_init__(self):
        _check_int("ScalingConfig.num_workers", self.num_workers, 1)
        if not isinstance(self.use_gpu, bool):
            raise TypeError(f"ScalingConfig.use_gpu must be a bool, got {self.use_gpu!r}.")
        if self.placement_strategy not in STRATEGIES:
            raise ValueError(
                f"ScalingConfig.placement_strategy must be one of {STRATEGIES}, got {self.placement_strategy!r}."
            )
        if self.resources_per_worker is not None:
            if not isinstance(self.resources_per_worker, dict):
                raise TypeError("ScalingConfig.resources_per_worker must be a dict of resource name to amount.")
            for name, amount in self.resources_per_worker.items():
                if not isinstance(name, str) or isinstance(amount, bool) or not isinstance(amount, (int, float)):
                    raise TypeError(f"resources_per_worker: {name!r}: {amount!r} is not a resource name and amount.")
                if amount < 0:
                    raise ValueError(f"resources_per_worker: {name!r} must not be negative, got {amount}.")

    def worker_resources(self) -> dict:
        """One worker's bundle, Ray's way: CPU 1 and GPU 1 (with use_gpu) unless set explicitly."""
        resources = {"CPU": 1.0}
        if self.use_gpu:
            resources["GPU"] = 1.0
        for name, amount in (self.resources_per_worker or {}).items():
            resources[name] = float(amount)
        return {name: amount for name, amount in resources.items() if amount > 0}

    @property
    def num_gpus_per_worker(self) -> float:
        return self.worker_resources().get("GPU", 0.0)


@dataclass
class FailureConfig:
    """How many times the worker group may fail and restart from the latest checkpoint before
    ``fit()`` gives up; -1 means without limit."""

    max_failures: int = 0
    fail_fast: bool = False

    def __post_init__(self):
        _check_int("FailureConfig.max_failures", self.max_failures, -1)


@dataclass
class CheckpointConfig:
    """Which reported checkpoints to keep: all (``num_to_keep=None``), or the ``num_to_keep`` best
    by the reported metric ``checkpoint_score_attribute`` ("max" or "min" is better), or the most
    recent ones without an attribute. The latest checkpoint is always kept, so a restart can use it."""

    num_to_keep: int | None = None
    checkpoint_score_attribute: str | None = None
    checkpoint_score_order: str = "max"

    def __post_init__(self):
        _check_int("CheckpointConfig.num_to_keep", self.num_to_keep, 1, allow_none=True)
        if self.checkpoint_score_order not in ("max", "min"):
            raise ValueError(f"checkpoint_score_order must be 'max' or 'min', got {self.checkpoint_score_order!r}.")
        if self.checkpoint_score_attribute is not None and not isinstance(self.checkpoint_score_attribute, str):
            raise TypeError("checkpoint_score_attribute must be a metric name (str).")


@dataclass
class RunConfig:
    """Where and how a run is recorded: results and checkpoints go under ``storage_path/name`` (a
    local directory, or a URI pyarrow understands such as ``s3://bucket/dir``; ``storage_filesystem``
    a pyarrow filesystem). ``callbacks``: objects with Ray Train's ``after_report(run_context,
    metrics, checkpoint)``, called in the driver once every worker made a report (``metrics``: each
    worker's). ``verbose=0`` silences the per-report lines outside a notebook."""

    name: str | None = None
    storage_path: str | None = None
    storage_filesystem: object = None
    failure_config: FailureConfig | None = None
    checkpoint_config: CheckpointConfig | None = None
    callbacks: list = field(default_factory=list)
    verbose: int = 1

    def __post_init__(self):
        if self.name is not None and (not isinstance(self.name, str) or not self.name or "/" in self.name):
            raise ValueError(f"RunConfig.name must be a non-empty string without '/', got {self.name!r}.")
        if self.storage_path is not None and not isinstance(self.storage_path, (str, os.PathLike)):
            raise TypeError(f"RunConfig.storage_path must be a path or URI string, got {self.storage_path!r}.")
        self.failure_config = self.failure_config or FailureConfig()
        self.checkpoint_config = self.checkpoint_config or CheckpointConfig()
        if not isinstance(self.failure_config, FailureConfig):
            raise TypeError("RunConfig.failure_config must be a FailureConfig.")
        if not isinstance(self.checkpoint_config, CheckpointConfig):
            raise TypeError("RunConfig.checkpoint_config must be a CheckpointConfig.")

    def resolved_storage(self) -> str:
        path = self.storage_path if self.storage_path is not None else os.environ.get("EMBER_STORAGE", DEFAULT_STORAGE)
        path = os.fspath(path)
        return path if "://" in path else os.path.abspath(os.path.expanduser(path))


@dataclass
class DataConfig:
    """Which of the trainer's ``datasets`` are split between the workers ("all", or a list of
    names); the others reach every worker whole."""

    datasets_to_split: object = "all"

    def __post_init__(self):
        if self.datasets_to_split != "all" and not isinstance(self.datasets_to_split, (list, tuple)):
            raise TypeError("DataConfig.datasets_to_split must be 'all' or a list of dataset names.")

    def splits(self, name: str) -> bool:
        return self.datasets_to_split == "all" or name in self.datasets_to_split
