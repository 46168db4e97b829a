"""The actor behind each process of a :class:`~ember.util.multiprocessing.Pool`.

:class:`_PoolActor` runs the pool's initializer once when it starts and then
the batches of calls the pool sends it, keeping globals set by functions that
arrived pickled by value; ``_CALL_*`` say how each item of a batch is passed
to the function, and :data:`PoolActor` is the remote actor class
on first use.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable
from typing import Any

import ember

from .results import _encode_exception

_CALL_ONE = 0  # func(item)
_CALL_STAR = 1  # func(*item)
_CALL_ARGS_KWARGS = 2  # func(*item[0], **item[1])


class _PoolActor:
    """One pool process: runs the initializer once, then batches of calls."""

    def __init__(self, initializer: Callable | None, initargs: tuple):
        # module name -> {global name: value} assigned by code run in this actor,
        # for functions that arrived pickled by value (see _run_with_globals).
        self._worker_globals: dict[str, dict[str, Any]] = {}
        if initializer is not None:
            self._run_with_globals(initializer, lambda: initializer(*initargs))

    def ping(self) -> int:
        return os.getpid()

    def _run_with_globals(self, fn: Any, body: Callable[[], Any]) -> Any:
        """Run ``body`` so globals that ``fn`` and earlier functions set persist in this actor.

        A function whose module cannot be imported here arrives with a private
        copy of the globals it uses, so an initializer doing ``global STATE;
        STATE = ...`` would otherwise be invisible to the functions run later.
        Values assigned to such globals are recorded per module and copied
        into the globals of every later function of that module.
        """
        if not isinstance(fn, types.FunctionType):
            return body()
        module = sys.modules.get(fn.__module__)
        if module is not None and getattr(module, "__dict__", None) is fn.__globals__:
            return body()  # a real module: its globals are already shared
        g = fn.__globals__
        saved = self._worker_globals.setdefault(fn.__module__, {})
        g.update(saved)
        before = dict(g)
        try:
            return body()
        finally:
            for name, value in g.items():
                if name not in before or before[name] is not value:
                    saved[name] = value

    def run_batch(self, func: Callable, batch: list[Any], mode: int) -> list[tuple[bool, Any]]:
        results: list[tuple[bool, Any]] = []

        def body() -> None:
            for item in batch:
                try:
                    if mode == _CALL_ONE:
                        value = func(item)
                    elif mode == _CALL_STAR:
                        value = func(*item)
                    else:
                        args, kwargs = item
                        value = func(*args, **kwargs)
                    results.append((True, value))
                except Exception as e:  # reported to the caller, like multiprocessing
                    results.append((False, _encode_exception(e)))

        self._run_with_globals(func, body)
        return results


PoolActor = ember.remote(_PoolActor)
