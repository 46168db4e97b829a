"""Turning values into bytes and back.

Values are pickled with protocol 5 and out-of-band buffers: a numpy array or Arrow buffer travels
as its own frame (or its own region of a shared-memory object) and is rebuilt around that memory,
never copied into the pickle stream. cloudpickle handles functions, lambdas and classes defined in
``__main__`` or a notebook.

While a value is pickled, every ObjectRef found inside it is recorded, because the owner must
keep those objects alive for as long as the containing value can be read.
"""

import io
import os
import pickle
import threading
import traceback
import types
from collections import ChainMap

import cloudpickle

from ember import exceptions

# Buffers smaller than this stay in the pickle stream: a frame of its own costs more than a copy.
INBAND_LIMIT = 4096

_local = threading.local()


def _code_reduce(code: types.CodeType):
    """cloudpickle's reduction of a code object, keeping its file name (cloudpickle replaces it with
    "<dynamic-code>" for deterministic payloads): a worker's traceback then names the script or the
    notebook cell the function was defined in, and the driver can show that file's or cell's lines.
    Only the file name argument changes, so any cloudpickle (an older worker's too) reads it."""
    constructor, args = _cloudpickle_code_reduce(code)
    if constructor is types.CodeType and _FILENAME_AT is not None and args[_FILENAME_AT] == _DYNAMIC:
        args = (*args[:_FILENAME_AT], code.co_filename, *args[_FILENAME_AT + 1 :])
    return constructor, args


def _filename_position() -> int | None:
    """Where cloudpickle's code arguments hold the file name: found once on a known code object."""
    probe = compile("pass", "<ember-probe>", "exec")
    constructor, args = _cloudpickle_code_reduce(probe)
    if constructor is not types.CodeType:
        return None
    found = [index for index, arg in enumerate(args) if arg == _DYNAMIC]
    return found[0] if len(found) == 1 else None


_DYNAMIC = "<dynamic-code>"
_cloudpickle_code_reduce = cloudpickle.Pickler.dispatch_table.get(types.CodeType)
_FILENAME_AT = _filename_position() if _cloudpickle_code_reduce is not None else None
# A cloudpickle that keeps file names itself, or reduces code some other way, is left as it is.
_OURS = {types.CodeType: _code_reduce} if _FILENAME_AT is not None else {}


_CLOUDPICKLE_TABLE = cloudpickle.Pickler.dispatch_table


class _Pickler(cloudpickle.Pickler):
    # One flat ChainMap (cloudpickle's own is one already): the pickler looks a type up here for
    # every object it meets, and a ChainMap nested in another would add a level to each lookup.
    dispatch_table = ChainMap(_OURS, *getattr(_CLOUDPICKLE_TABLE, "maps", [_CLOUDPICKLE_TABLE]))


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


# The worker's functions that call the user's code: frames up to and including theirs are Ember's.
_CALL_INS = frozenset({"run_user_code", "_run_async_call", "stream_async"})
_WORKER_FILE = os.path.join("ember", "runtime", "worker", "worker.py")
_EMBER_DIR = os.path.dirname(os.path.abspath(exceptions.__file__)) + os.sep


def user_frames_start(frames: list) -> int:
    """Index of the first frame of the user's code in a worker's stack (0 when there is none).

    The worker loop, ``run_user_code`` and whatever Ember module wrapped the user's function come
    first; they are dropped. When no call into user code is on the stack (arguments could not be
    read, the result could not be pickled, the function could not be loaded) Ember itself failed,
    and every frame is kept.
    """
    for index, frame in enumerate(frames):
        if frame.name in _CALL_INS and frame.filename.endswith(_WORKER_FILE):
            start = index + 1
            while start < len(frames) - 1 and frames[start].filename.startswith(_EMBER_DIR):
                start += 1  # e.g. %%remote's run_cell, which executes the cell's code
            return start if start < len(frames) else 0
    return 0


def _frames_of(stack) -> list:
    return [(f.filename, f.lineno, f.name, f.line or "") for f in stack]


def _chain_of(error: BaseException) -> list:
    """The exceptions behind this one (``raise ... from``, or raised while handling), nearest first,
    as (type name, module, message, frames, "cause" or "context"): their objects may not pickle."""
    chain, seen = [], {id(error)}
    while True:
        if error.__cause__ is not None:
            error, how = error.__cause__, "cause"
        elif error.__context__ is not None and not error.__suppress_context__:
            error, how = error.__context__, "context"
        else:
            return chain
        if id(error) in seen:  # a cycle, which Python's own printing also stops at
            return chain
        seen.add(id(error))
        try:
            message = str(error)
        except Exception:
            message = "<exception str() failed>"
        kind = type(error)
        stack = traceback.extract_tb(error.__traceback__)
        chain.append((kind.__qualname__, kind.__module__, message, _frames_of(stack), how))


def _format(error: BaseException) -> tuple[str, list, list]:
    """The traceback text of the user's frames, those frames as (filename, line, name, source), and
    the chained exceptions' (see _chain_of)."""
    summary = traceback.TracebackException(type(error), error, error.__traceback__)
    summary.stack = traceback.StackSummary.from_list(summary.stack[user_frames_start(summary.stack) :])
    return "".join(summary.format()), _frames_of(summary.stack), _chain_of(error)


def serialize_error(error: BaseException, function_name: str, pid: int, node: str = "") -> bytes:
    """Pickle a task's exception as a TaskError carrying the remote traceback (the user's frames)."""
    if isinstance(error, exceptions.TaskError):
        task_error = error  # a nested task's failure travels up as it is
    else:
        text, frames, chain = _format(error)
        task_error = exceptions.TaskError(function_name, text, error, pid, node, frames, chain)
    try:
        payload = cloudpickle.dumps(task_error)
        cloudpickle.loads(payload)  # an exception whose __init__ takes other arguments pickles, then fails here
        return payload
    except Exception:
        # The user's exception cannot travel: keep its type name and message in the text.
        cause = RuntimeError(f"{type(error).__name__}: {error}")
        fallback = exceptions.TaskError(
            function_name, task_error.traceback_str, cause, pid, node, task_error.frames, task_error.chain
        )
        return cloudpickle.dumps(fallback)


def dumps_function(function) -> bytes:
    stream = io.BytesIO()
    try:
        _Pickler(stream, protocol=5).dump(function)
        return stream.getvalue()
    except Exception as error:
        raise SerializationError(
            f"Could not serialize {getattr(function, '__qualname__', function)!r}: {type(error).__name__}: {error}. "
            "A remote function or actor class must not capture unpicklable objects (locks, sockets, open files)."
        ) from error
