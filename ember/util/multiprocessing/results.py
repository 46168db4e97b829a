"""Results of :class:`~ember.util.multiprocessing.Pool` calls, and the exceptions they carry.

This module holds what the caller waits on: :class:`AsyncResult` (alias
:class:`ApplyResult`) and :class:`MapResult`, the :class:`IMapIterator` and
:class:`IMapUnorderedIterator` returned by ``imap``/``imap_unordered``, the
pool's :class:`TimeoutError`, the helpers that send an exception raised in a
pool actor back to the caller with its remote traceback attached
(:class:`RemoteTraceback`), and the checks on the callback and timeout
arguments these objects accept.
"""

from __future__ import annotations

import builtins
import collections
import logging
import multiprocessing as _mp
import threading
import traceback
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class TimeoutError(_mp.TimeoutError, builtins.TimeoutError):
    """Raised when a result is not ready within the timeout.

    It is both a :class:`multiprocessing.TimeoutError` (what code written for
    ``multiprocessing`` catches) and a builtin :class:`TimeoutError`.
    """


# --------------------------------------------------------------------------
# Exceptions travelling back from the actors
# --------------------------------------------------------------------------
class RemoteTraceback(Exception):
    """Carries the formatted traceback of an exception raised inside a pool worker.

    It is attached as ``__cause__`` of the re-raised exception, as
    :mod:`multiprocessing` does.
    """

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def _rebuild_exception(exc: BaseException, tb: str) -> BaseException:
    exc.__cause__ = RemoteTraceback(tb)
    return exc


class _ExceptionWithTraceback:
    """Pickles as the original exception with its remote traceback attached as the cause."""

    def __init__(self, exc: BaseException):
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.tb = f'\n"""\n{text}"""'
        self.exc = exc

    def __reduce__(self):
        return _rebuild_exception, (self.exc, self.tb)


def _encode_exception(exc: BaseException) -> Any:
    """Make an exception safe to send back: keep it if it pickles, else describe it."""
    wrapped = _ExceptionWithTraceback(exc)
    try:
        import cloudpickle

        cloudpickle.loads(cloudpickle.dumps(wrapped))
    except Exception:
        try:
            text = repr(exc)
        except Exception:
            text = type(exc).__name__
        return _ExceptionWithTraceback(RuntimeError(f"Error sending result: {text}"))
    return wrapped


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------
class AsyncResult:
    """The result of :meth:`Pool.apply_async` / :meth:`Pool.map_async`, as in multiprocessing.

    Callbacks given at submission run in the pool's result thread once the
    result is known, before :meth:`ready` turns True.
    """

    def __init__(self, callback: Callable | None = None, error_callback: Callable | None = None):
        _check_callback(callback, "callback")
        _check_callback(error_callback, "error_callback")
        self._event = threading.Event()
        self._callback = callback
        self._error_callback = error_callback
        self._success: bool | None = None
        self._value: Any = None

    def _set(self, success: bool, value: Any) -> None:
        if self._event.is_set():
            return
        self._success = success
        self._value = value
        try:
            if success and self._callback is not None:
                self._callback(value)
            elif not success and self._error_callback is not None:
                self._error_callback(value)
        except Exception:
            logger.exception("Exception in a Pool result callback")
        finally:
            self._event.set()

    def _abandon(self, exc: BaseException) -> None:
        """Fail the result without running callbacks (the pool was terminated)."""
        if not self._event.is_set():
            self._success = False
            self._value = exc
            self._event.set()

    def ready(self) -> bool:
        """Return whether the call has completed."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Return whether the call completed without raising.

        Raises:
            ValueError: If the result is not ready yet.
        """
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return bool(self._success)

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is available or ``timeout`` seconds pass."""
        _check_timeout(timeout)
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        """Return the result when it arrives, re-raising the call's exception if it failed.

        Raises:
            TimeoutError: If the result is not ready within ``timeout`` seconds
                (an instance of both :class:`multiprocessing.TimeoutError` and
                the builtin :class:`TimeoutError`).
        """
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError("Timed out waiting for the result")
        if self._success:
            return self._value
        raise self._value


ApplyResult = AsyncResult


class MapResult(AsyncResult):
    """The result of :meth:`Pool.map_async` / :meth:`Pool.starmap_async`: a list once ready."""

    def __init__(self, length: int, callback=None, error_callback=None):
        super().__init__(callback, error_callback)
        self._items: list[Any] = [None] * length
        self._error: BaseException | None = None
        self._chunks_left = 0
        self._lock = threading.Lock()

    def _expect_chunks(self, n: int) -> None:
        self._chunks_left = n
        if n == 0:
            self._set(True, [])

    def _set_chunk(self, start: int, size: int, ok: bool, value: Any) -> None:
        with self._lock:
            for i, (item_ok, item) in enumerate(_chunk_items(size, ok, value)):
                if item_ok:
                    self._items[start + i] = item
                elif self._error is None:
                    self._error = item
            self._chunks_left -= 1
            done = self._chunks_left == 0
        if done:
            if self._error is None:
                self._set(True, self._items)
            else:
                self._set(False, self._error)


class IMapIterator:
    """Iterator returned by :meth:`Pool.imap`: yields results in input order.

    ``next(timeout)`` raises :class:`TimeoutError` if the next result is not
    ready in time; a failed call re-raises its exception at its position and
    iteration can continue past it.
    """

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._results: dict[int, tuple[bool, Any]] = {}
        self._next_index = 0
        self._length: int | None = None

    def _set_length(self, length: int) -> None:
        with self._cond:
            self._length = length
            self._cond.notify_all()

    def _set_chunk(self, start: int, size: int, ok: bool, value: Any) -> None:
        with self._cond:
            for i, item in enumerate(_chunk_items(size, ok, value)):
                self._results[start + i] = item
            self._cond.notify_all()

    def _ready_locked(self) -> bool:
        return self._next_index in self._results

    def _take_locked(self) -> tuple[bool, Any]:
        item = self._results.pop(self._next_index)
        self._next_index += 1
        return item

    def __iter__(self) -> IMapIterator:
        return self

    def next(self, timeout: float | None = None) -> Any:
        """Return the next result, waiting at most ``timeout`` seconds (None: forever)."""
        _check_timeout(timeout)
        with self._cond:
            if self._length is not None and self._next_index >= self._length:
                raise StopIteration
            if not self._cond.wait_for(self._ready_locked, timeout):
                raise TimeoutError("Timed out waiting for the next result")
            ok, value = self._take_locked()
        if ok:
            return value
        raise value

    def __next__(self) -> Any:
        return self.next()


class IMapUnorderedIterator(IMapIterator):
    """Iterator returned by :meth:`Pool.imap_unordered`: yields results as they complete."""

    def __init__(self):
        super().__init__()
        self._arrived: collections.deque = collections.deque()

    def _set_chunk(self, start: int, size: int, ok: bool, value: Any) -> None:
        with self._cond:
            self._arrived.extend(_chunk_items(size, ok, value))
            self._cond.notify_all()

    def _ready_locked(self) -> bool:
        return bool(self._arrived)

    def _take_locked(self) -> tuple[bool, Any]:
        self._next_index += 1
        return self._arrived.popleft()


def _chunk_items(size: int, ok: bool, value: Any) -> list[tuple[bool, Any]]:
    """Per-item (ok, value) pairs of a finished chunk; a failed chunk fails every item."""
    if ok:
        return list(value)
    return [(False, value)] * size


def _check_callback(cb: Any, name: str) -> None:
    if cb is not None and not callable(cb):
        raise TypeError(f"{name} must be callable or None, got {type(cb).__name__}")


def _check_timeout(timeout: Any) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number or None, got {type(timeout).__name__}")
