"""DataContext: the execution options of ember.data, named as Ray's ``ray.data.DataContext``."""

import copy
import threading
from dataclasses import dataclass, field


@dataclass
class ExecutionResources:
    """Limits on what one execution may hold; ``None`` means "derive from the cluster"."""

    cpu: float | None = None
    gpu: float | None = None
    object_store_memory: int | None = None


@dataclass
class ExecutionOptions:
    """Options of the streaming executor.

    ``resource_limits.object_store_memory`` is the budget of store bytes the execution may hold in
    flight (blocks queued between operators, the inputs of running tasks and an estimate of their
    outputs); when it is used up no new task starts until the consumer catches up (backpressure).
    ``preserve_order`` keeps each operator's output in its input order.
    """

    resource_limits: ExecutionResources = field(default_factory=ExecutionResources)
    preserve_order: bool = True
    verbose_progress: bool = False


@dataclass
class DataContext:
    """Execution options of ember.data; ``DataContext.get_current()`` is the one executions read.

    ``target_max_block_size`` caps the bytes of the blocks that reads produce; reads produce at
    least ``read_op_min_num_blocks`` blocks when the data has that many rows. Ray's default of 200
    blocks costs a small machine more in per-task overhead than it gains in parallelism, so Ember's
    default is 2 blocks per cluster CPU, at least 8.
    """

    target_max_block_size: int = 128 * 1024 * 1024
    read_op_min_num_blocks: int | None = None
    execution_options: ExecutionOptions = field(default_factory=ExecutionOptions)
    # Share of the cluster's object store an execution may hold when no explicit limit is set.
    object_store_memory_fraction: float = 0.25
    max_tasks_in_flight_per_actor: int = 2
    actor_pool_idle_scale_down: bool = True
    # Each execution's live widget in a notebook, a few log lines on stderr elsewhere (ember/data/progress.py).
    enable_progress_bars: bool = True

    _local = threading.local()

    @staticmethod
    def get_current() -> "DataContext":
        """The context in effect for this thread (a copy of the process default on first use)."""
        current = getattr(DataContext._local, "context", None)
        if current is None:
            current = DataContext._local.context = copy.deepcopy(_DEFAULT)
        return current

    @staticmethod
    def _set_current(context: "DataContext") -> None:
        DataContext._local.context = context


_DEFAULT = DataContext()


_resources_cache = [0.0, None]


def cluster_resources() -> dict:
    """ember.cluster_resources(), remembered for a few seconds: every read and execution asks for
    it, and a round trip to the head per call adds up over many small datasets."""
    import time

    import ember

    now = time.monotonic()
    if _resources_cache[1] is None or now - _resources_cache[0] > 5.0:
        _resources_cache[:] = [now, ember.cluster_resources()]
    return _resources_cache[1]
