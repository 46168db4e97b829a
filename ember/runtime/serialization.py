"""Turning values into bytes and back.

Values are pickled with protocol 5 and out-of-band buffers: a numpy array or Arrow buffer travels
as its own frame (or its own region of a shared-memory object) and is rebuilt around that memory,
never copied into the pickle stream. cloudpickle handles functions, lambdas and classes defined in
``__main__`` or a notebook.

While a value is pickled, every ObjectRef found inside it is recorded, because the owner must
keep those objects alive for as long as the containing value can be read.
"""

import io
import pickle
import threading
import traceback

import cloudpickle

from ember import exceptions

# Buffers smaller than this stay in the pickle stream: a frame of its own costs more than a copy.
INBAND_LIMIT = 4096

_local = threading.local()


class _Pickler(cloudpickle.Pickler):
    pass


class SerializationError(TypeError):
    """A value could not be pickled; the message names it and says why."""


def _contained() -> list | None:
    return getattr(_local, "contained", None)


def record_contained_ref(ref) -> None:
    """Called by ObjectRef.__reduce__: note a ref nested in the value being serialized."""
    contained = _contained()
    if contained is not None:
        contained.append(ref)


_SCALARS = frozenset({int, float, str, bytes, bool, type(None)})


def _plain(value, depth: int = 3) -> bool:
    """Whether ``value`` is builtin scalars in small builtin containers: C pickle handles it alone."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if not depth or kind not in (tuple, list, dict) or len(value) > 16:
        return False
    if kind is dict:
        return all(type(k) in _SCALARS and _plain(v, depth - 1) for k, v in value.items())
    return all(_plain(v, depth - 1) for v in value)


def serialize(value, what: str = "value") -> tuple[bytes, list, list]:
    """Pickle ``value``; returns (pickle bytes, out-of-band buffers, contained ObjectRefs)."""
    if _plain(value):
        # The common case of small arguments and results: skip building a cloudpickle Pickler.
        return pickle.dumps(value, protocol=5), [], []
    buffers: list = []

    def buffer_callback(buffer: pickle.PickleBuffer):
        raw = buffer.raw()
        if raw.nbytes < INBAND_LIMIT:
            return True
        buffers.append(raw)
        return False

    outer = _contained()
    _local.contained = contained = []
    stream = io.BytesIO()
    try:
        _Pickler(stream, protocol=5, buffer_callback=buffer_callback).dump(value)
    except Exception as error:
        raise SerializationError(
            f"Could not serialize {what} of type {type(value).__name__}: {type(error).__name__}: {error}. "
            "Values passed to or returned from tasks and actors must be picklable "
            "(open files, locks, sockets and generators are not)."
        ) from error
    finally:
        _local.contained = outer
    return stream.getvalue(), buffers, contained


def deserialize(data, buffers=()):
    return pickle.loads(data, buffers=buffers)


def serialize_error(error: BaseException, function_name: str, pid: int, node: str = "") -> bytes:
    """Pickle a task's exception as a TaskError carrying the remote traceback."""
    tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    if isinstance(error, exceptions.TaskError):
        task_error = error  # a nested task's failure travels up as it is
    else:
        task_error = exceptions.TaskError(function_name, tb, error, pid, node)
    try:
        payload = cloudpickle.dumps(task_error)
        cloudpickle.loads(payload)  # an exception whose __init__ takes other arguments pickles, then fails here
        return payload
    except Exception:
        # The user's exception cannot travel: keep its type name and message in the text.
        fallback = exceptions.TaskError(function_name, tb, RuntimeError(f"{type(error).__name__}: {error}"), pid, node)
        return cloudpickle.dumps(fallback)


def dumps_function(function) -> bytes:
    try:
        return cloudpickle.dumps(function)
    except Exception as error:
        raise SerializationError(
            f"Could not serialize {getattr(function, '__qualname__', function)!r}: {type(error).__name__}: {error}. "
            "A remote function or actor class must not capture unpicklable objects (locks, sockets, open files)."
        ) from error
