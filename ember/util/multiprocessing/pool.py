"""The :class:`Pool` itself: a :class:`multiprocessing.Pool` whose processes are Ember actors.

This module holds :class:`Pool` with its bookkeeping of worker actors
(:class:`_Worker`), the result thread that delivers finished chunks to their
results, the lookup of the cluster's CPU count, and the checks on the
function and chunksize arguments.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import ember

from .pool_actor import _CALL_ARGS_KWARGS, _CALL_ONE, _CALL_STAR, PoolActor
from .results import (
    AsyncResult,
    IMapIterator,
    IMapUnorderedIterator,
    MapResult,
    _chunk_items,
)

logger = logging.getLogger(__name__)

_RUN, _CLOSE, _TERMINATE = "RUN", "CLOSE", "TERMINATE"
# How often the result thread looks for newly submitted work while it waits.
_POLL_S = 0.02


class _Worker:
    __slots__ = ("actor", "inflight", "submitted", "retired")

    def __init__(self, actor: Any):
        self.actor = actor
        self.inflight = 0
        self.submitted = 0
        self.retired = False


class Pool:
    """A pool of Ember actors that runs functions in parallel, like :class:`multiprocessing.Pool`.

    Each of the ``processes`` workers is an actor. Work is split in chunks
    and each chunk goes to the least busy actor. Results, callbacks and
    errors behave as in :mod:`multiprocessing`: an exception raised by the
    function is re-raised by ``get()`` / ``map()`` in the caller.

    Arguments:
        processes: Number of actors. Defaults to the number of CPUs of the
            cluster (or of this machine if the cluster does not report it).
        initializer: Called as ``initializer(*initargs)`` once in each actor
            when it starts; state it sets (for example module globals) is
            seen by the tasks that actor runs afterwards.
        initargs: Arguments for ``initializer``.
        maxtasksperchild: If set, an actor is replaced by a fresh one (which
            runs the initializer again) after it has been given this many
            chunks of work.
        context: Accepted for compatibility with :mod:`multiprocessing` and
            ignored.
        ray_address: Address of the cluster to connect to if ``ember.init()``
            has not been called yet; otherwise a local cluster is started.
        ray_remote_args: Options for the worker actors, passed to
            ``.options(...)`` (for example ``{"num_cpus": 1}``). By default
            the actors reserve no CPU, as in Ray.

    Examples:
        .. code-block:: python

            from ember.util.multiprocessing import Pool

            def square(x):
                return x * x

            with Pool(2) as pool:
                print(pool.map(square, range(5)))  # [0, 1, 4, 9, 16]
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        ray_address: str | None = None,
        ray_remote_args: dict[str, Any] | None = None,
    ):
        if processes is not None and (isinstance(processes, bool) or not isinstance(processes, int)):
            raise TypeError(f"processes must be an int or None, got {type(processes).__name__}")
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None and (
            isinstance(maxtasksperchild, bool) or not isinstance(maxtasksperchild, int) or maxtasksperchild < 1
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if ray_remote_args is not None and not isinstance(ray_remote_args, dict):
            raise TypeError(f"ray_remote_args must be a dict or None, got {type(ray_remote_args).__name__}")
        self._initializer = initializer
        self._initargs = tuple(initargs) if initargs is not None else ()
        self._maxtasksperchild = maxtasksperchild
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._state = _RUN
        # ref -> (worker, on_done(ok, value), on_abandon(exc))
        self._pending: dict[Any, tuple[_Worker, Callable, Callable]] = {}
        self._workers: list[_Worker] = []
        self._retired: list[_Worker] = []
        self._rr = itertools.count()

        if not ember.is_initialized():
            if ray_address is not None:
                ember.init(address=ray_address)
            elif processes is not None:
                ember.init(num_cpus=processes)
            else:
                ember.init()
        cluster_cpus = _cluster_cpus()
        if processes is None:
            processes = max(1, int(cluster_cpus or os.cpu_count() or 1))
        elif cluster_cpus is not None and processes > cluster_cpus:
            raise ValueError(
                f"Tried to start a pool with {processes} processes on a cluster with only {int(cluster_cpus)} CPUs."
            )
        self._processes = processes
        options = {"num_cpus": 0}
        options.update(ray_remote_args or {})
        self._actor_cls = PoolActor.options(**options)
        self._workers = [self._new_worker() for _ in range(processes)]
        try:
            # Surfaces initializer failures here instead of on first use.
            ember.get([w.actor.ping.remote() for w in self._workers])
        except BaseException:
            self._kill_all(self._workers)
            self._state = _TERMINATE
            raise
        self._handler = threading.Thread(target=self._handle_results, name="ember-pool-results", daemon=True)
        self._handler.start()

    # ------------------------------------------------------------ internals
    def _new_worker(self) -> _Worker:
        return _Worker(self._actor_cls.remote(self._initializer, self._initargs))

    def _check_running(self) -> None:
        if self._state != _RUN:
            raise ValueError("Pool not running")

    def _submit_chunk(self, func: Any, batch: list[Any], mode: int, on_done: Callable, on_abandon: Callable) -> None:
        with self._cond:
            self._check_running()
            n = len(self._workers)
            start = next(self._rr) % n
            order = self._workers[start:] + self._workers[:start]
            worker = min(order, key=lambda w: w.inflight)
            ref = worker.actor.run_batch.remote(func, batch, mode)
            worker.inflight += 1
            worker.submitted += 1
            if self._maxtasksperchild is not None and worker.submitted >= self._maxtasksperchild:
                # The actor finishes what it was given, then is killed by the result thread.
                worker.retired = True
                self._retired.append(worker)
                self._workers[self._workers.index(worker)] = self._new_worker()
            self._pending[ref] = (worker, on_done, on_abandon)
            self._cond.notify_all()

    def _handle_results(self) -> None:
        """Result thread: waits on outstanding chunks and delivers them to their results."""
        while True:
            with self._cond:
                while not self._pending and self._state == _RUN:
                    self._cond.wait()
                if self._state == _TERMINATE:
                    return
                if not self._pending:  # closed and drained
                    workers = self._workers + self._retired
                    self._workers, self._retired = [], []
                    break
                refs = list(self._pending)
            try:
                ready, _ = ember.wait(refs, num_returns=1, timeout=_POLL_S)
                if ready and len(refs) > 1:
                    ready, _ = ember.wait(refs, num_returns=len(refs), timeout=0)
            except Exception as e:  # the cluster went away: fail everything outstanding
                with self._cond:
                    failed = list(self._pending.values())
                    self._pending.clear()
                for worker, on_done, _ in failed:
                    worker.inflight -= 1
                    on_done(False, e)
                continue
            for ref in ready:
                with self._cond:
                    entry = self._pending.pop(ref, None)
                if entry is None:  # terminated meanwhile
                    continue
                worker, on_done, _ = entry
                try:
                    ok, value = True, ember.get(ref)
                except Exception as e:
                    ok, value = False, e
                with self._cond:
                    worker.inflight -= 1
                    finished = worker.retired and worker.inflight == 0
                    if finished:
                        self._retired.remove(worker)
                if finished:
                    self._kill_all([worker])
                try:
                    on_done(ok, value)
                except Exception:
                    logger.exception("Error delivering a Pool result")
        self._kill_all(workers)

    @staticmethod
    def _kill_all(workers: list[_Worker]) -> None:
        for w in workers:
            try:
                ember.kill(w.actor)
            except Exception:
                pass

    def _chunks(self, iterable: Iterable[Any], chunksize: int) -> Iterator[tuple[int, list[Any]]]:
        it = iter(iterable)
        start = 0
        while True:
            batch = list(itertools.islice(it, chunksize))
            if not batch:
                return
            yield start, batch
            start += len(batch)

    def _default_chunksize(self, n: int) -> int:
        chunksize, extra = divmod(n, self._processes * 4)
        if extra:
            chunksize += 1
        return max(1, chunksize)

    def _map_async(self, func, iterable, mode, chunksize, callback, error_callback) -> MapResult:
        self._check_running()
        _check_func(func)
        items = iterable if isinstance(iterable, list) else list(iterable)
        if chunksize is None:
            chunksize = self._default_chunksize(len(items))
        _check_chunksize(chunksize)
        result = MapResult(len(items), callback, error_callback)
        chunks = list(self._chunks(items, chunksize))
        result._expect_chunks(len(chunks))
        fn = ember.put(func) if len(chunks) > 1 else func
        for start, batch in chunks:
            self._submit_chunk(
                fn,
                batch,
                mode,
                lambda ok, v, s=start, n=len(batch): result._set_chunk(s, n, ok, v),
                result._abandon,
            )
        return result

    def _imap(self, func, iterable, mode, chunksize, iterator: IMapIterator) -> IMapIterator:
        self._check_running()
        _check_func(func)
        _check_chunksize(chunksize)
        total = 0
        fn = None
        for start, batch in self._chunks(iterable, chunksize):
            if fn is None:
                fn = ember.put(func)
            self._submit_chunk(
                fn,
                batch,
                mode,
                lambda ok, v, s=start, n=len(batch): iterator._set_chunk(s, n, ok, v),
                lambda e, s=start, n=len(batch): iterator._set_chunk(s, n, False, e),
            )
            total = start + len(batch)
        iterator._set_length(total)
        return iterator

    # ------------------------------------------------------------------ API
    def apply(self, func: Callable, args: Iterable[Any] = (), kwds: dict[str, Any] | None = None) -> Any:
        """Call ``func(*args, **kwds)`` in a pool actor and return its result (blocking)."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable,
        args: Iterable[Any] = (),
        kwds: dict[str, Any] | None = None,
        callback: Callable[[Any], None] | None = None,
        error_callback: Callable[[BaseException], None] | None = None,
    ) -> AsyncResult:
        """Call ``func(*args, **kwds)`` in a pool actor without waiting.

        Arguments:
            func: The function to call.
            args: Positional arguments.
            kwds: Keyword arguments.
            callback: Called with the result when the call succeeds.
            error_callback: Called with the exception when the call fails.

        Returns:
            An :class:`AsyncResult`.
        """
        self._check_running()
        _check_func(func)
        if kwds is None:
            kwds = {}
        if not isinstance(kwds, dict):
            raise TypeError(f"kwds must be a dict, got {type(kwds).__name__}")
        result = AsyncResult(callback, error_callback)

        def on_done(ok: bool, value: Any) -> None:
            ((item_ok, item),) = _chunk_items(1, ok, value)
            result._set(item_ok, item)

        self._submit_chunk(func, [(tuple(args), kwds)], _CALL_ARGS_KWARGS, on_done, result._abandon)
        return result

    def map(self, func: Callable, iterable: Iterable[Any], chunksize: int | None = None) -> list[Any]:
        """Apply ``func`` to each element of ``iterable`` in parallel; return the results in order.

        Arguments:
            func: Function of one argument.
            iterable: The inputs (consumed at once).
            chunksize: Number of inputs sent to an actor per call; by default
                chosen so each actor gets about four chunks.

        Raises:
            Exception: The first exception raised by ``func``.
        """
        return self._map_async(func, iterable, _CALL_ONE, chunksize, None, None).get()

    def map_async(
        self,
        func: Callable,
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[list[Any]], None] | None = None,
        error_callback: Callable[[BaseException], None] | None = None,
    ) -> AsyncResult:
        """Non-blocking :meth:`map`; returns an :class:`AsyncResult` whose value is the list."""
        return self._map_async(func, iterable, _CALL_ONE, chunksize, callback, error_callback)

    def starmap(self, func: Callable, iterable: Iterable[Iterable[Any]], chunksize: int | None = None) -> list[Any]:
        """Like :meth:`map`, but each element is unpacked: ``func(*element)``."""
        return self._map_async(func, iterable, _CALL_STAR, chunksize, None, None).get()

    def starmap_async(
        self,
        func: Callable,
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[Any]], None] | None = None,
        error_callback: Callable[[BaseException], None] | None = None,
    ) -> AsyncResult:
        """Non-blocking :meth:`starmap`."""
        return self._map_async(func, iterable, _CALL_STAR, chunksize, callback, error_callback)

    def imap(self, func: Callable, iterable: Iterable[Any], chunksize: int = 1) -> IMapIterator:
        """Like :meth:`map`, but return an iterator that yields results in order as they arrive."""
        return self._imap(func, iterable, _CALL_ONE, chunksize, IMapIterator())

    def imap_unordered(self, func: Callable, iterable: Iterable[Any], chunksize: int = 1) -> IMapIterator:
        """Like :meth:`imap`, but results are yielded in completion order."""
        return self._imap(func, iterable, _CALL_ONE, chunksize, IMapUnorderedIterator())

    def close(self) -> None:
        """Stop accepting work; the actors exit once the submitted work is done."""
        with self._cond:
            if self._state == _RUN:
                self._state = _CLOSE
            self._cond.notify_all()

    def terminate(self) -> None:
        """Stop at once: kill the actors; results still outstanding fail."""
        with self._cond:
            if self._state == _TERMINATE and not self._workers and not self._retired:
                return
            self._state = _TERMINATE
            pending = list(self._pending.values())
            self._pending.clear()
            workers = self._workers + self._retired
            self._workers, self._retired = [], []
            self._cond.notify_all()
        self._kill_all(workers)
        error = RuntimeError("Pool was terminated before the result was ready")
        for _, _, on_abandon in pending:
            # Fail outstanding results without running user callbacks.
            on_abandon(error)
        handler = getattr(self, "_handler", None)
        if handler is not None and handler is not threading.current_thread():
            handler.join()

    def join(self) -> None:
        """Wait for the actors to exit; call :meth:`close` or :meth:`terminate` first.

        Raises:
            ValueError: If the pool is still running.
        """
        if self._state == _RUN:
            raise ValueError("Pool is still running")
        handler = getattr(self, "_handler", None)
        if handler is not None and handler is not threading.current_thread():
            handler.join()

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
        self.terminate()

    def __reduce__(self):
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} state={self._state} processes={self._processes}>"


def _cluster_cpus() -> float | None:
    fn = getattr(ember, "cluster_resources", None)
    if fn is None:
        return None
    try:
        cpus = fn().get("CPU")
    except Exception:
        return None
    return float(cpus) if cpus else None


def _check_func(func: Any) -> None:
    if not callable(func):
        raise TypeError(f"func must be callable, got {type(func).__name__}")


def _check_chunksize(chunksize: Any) -> None:
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(f"chunksize must be an int, got {type(chunksize).__name__}")
    if chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize}")
