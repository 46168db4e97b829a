"""A joblib parallel backend that runs joblib (and scikit-learn) work on Ember.

Usage::

    import joblib
    from ember.util.joblib import register_ember

    register_ember()
    with joblib.parallel_backend("ember"):
        ...  # joblib.Parallel / scikit-learn n_jobs work runs on Ember actors

The backend starts an :class:`ember.util.multiprocessing.Pool` with
``n_jobs`` actors for each ``Parallel`` call and sends joblib's batches to it.
"""

from __future__ import annotations

from typing import Any

from joblib import register_parallel_backend
from joblib._parallel_backends import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    PoolManagerMixin,
    SequentialBackend,
)

import ember

from .multiprocessing import Pool

__all__ = ["EmberBackend", "register_ember", "register_ray"]


class EmberBackend(PoolManagerMixin, AutoBatchingMixin, ParallelBackendBase):
    """joblib backend that runs each batch of work in a pool of Ember actors.

    ``n_jobs=-1`` uses every CPU of the cluster, and larger values are
    capped at that number; ``n_jobs=1`` runs sequentially in the caller, as
    joblib's process backends do.

    Arguments:
        nesting_level: Set by joblib for nested ``Parallel`` calls.
        inner_max_num_threads: Accepted for compatibility with joblib.
        ray_remote_args: Options for the pool's actors (for example
            ``{"num_cpus": 1}``), passed to ``.options(...)``.
    """

    supports_retrieve_callback = True
    supports_return_generator = True
    supports_timeout = True
    supports_inner_max_num_threads = False

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        ray_remote_args: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        if ray_remote_args is not None and not isinstance(ray_remote_args, dict):
            raise TypeError(f"ray_remote_args must be a dict or None, got {type(ray_remote_args).__name__}")
        self.ray_remote_args = ray_remote_args
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads, **kwargs)

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """Return how many actors a ``Parallel`` call with ``n_jobs`` uses."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if isinstance(n_jobs, bool) or not isinstance(n_jobs, int):
            raise TypeError(f"n_jobs must be an int or None, got {type(n_jobs).__name__}")
        if not ember.is_initialized():
            ember.init()
        cpus = _cluster_cpus()
        if n_jobs < 0:
            return max(cpus + 1 + n_jobs, 1)
        # A pool cannot have more actors than the cluster has CPUs.
        return min(n_jobs, cpus)

    def configure(
        self,
        n_jobs: int = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        """Start the actor pool for a ``Parallel`` call and return its size."""
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self._pool = Pool(processes=n_jobs, ray_remote_args=self.ray_remote_args)
        self.parallel = parallel
        return n_jobs

    def terminate(self) -> None:
        """Shut the actor pool down."""
        super().terminate()
        self.reset_batch_stats()


def _cluster_cpus() -> int:
    import os

    fn = getattr(ember, "cluster_resources", None)
    if fn is not None:
        try:
            cpus = fn().get("CPU")
            if cpus:
                return int(cpus)
        except Exception:
            pass
    return os.cpu_count() or 1


def register_ember() -> None:
    """Register the Ember backend with joblib.

    Afterwards ``joblib.parallel_backend("ember")`` (or ``"ray"``, so that
    code written for Ray runs unchanged) selects it.
    """
    register_parallel_backend("ember", EmberBackend)
    register_parallel_backend("ray", EmberBackend)


#: Alias of :func:`register_ember`, for code written against ``ray.util.joblib``.
register_ray = register_ember
