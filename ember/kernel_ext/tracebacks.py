"""How a task's failure reads in a notebook: the user's frames, named by cell, with their source.

The worker sends the user's frames as (filename, line, name) — with the filename kept through
pickling, so a function defined in a cell names that cell's file. Only the kernel has the cell's
source (IPython's ``linecache`` entries) and knows which execution count a cell file belongs to, so
the traceback is put together here: each remote frame becomes a real traceback entry of a small
stand-in frame compiled under the cell's file name at the failing line, and IPython formats the
whole chain (caller's cell, then the task's frames) as it formats any local error —
``Cell In[3], line 9`` with the lines around it, in the user's colour scheme and ``%xmode``.
"""

import os
import sys
import traceback
import types

_EMBER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


class _Here(Exception):
    """Raised by a stand-in frame so its frame object can be taken from the traceback."""


def _stand_in_frame(filename: str, lineno: int, name: str):
    """A frame object whose code has ``filename``, ``name`` and is stopped at ``lineno``."""
    # Blank lines put the raise at the failing line number; nothing of the user's runs.
    code = compile("\n" * (lineno - 1) + "raise _Here()", filename, "exec")
    code = code.replace(co_name=name, co_qualname=name)
    try:
        exec(code, {"_Here": _Here, "__name__": "__ember_remote__"})
    except _Here:
        return sys.exc_info()[2].tb_next
    return None


def remote_traceback(frames: list, tail=None):
    """A traceback (outermost first) of stand-in frames for the worker's ``frames``, ending in ``tail``."""
    tb = tail
    for filename, lineno, name, _ in reversed(frames):
        if not lineno or lineno < 1:
            continue
        stand_in = _stand_in_frame(filename, lineno, name)
        if stand_in is not None:
            tb = types.TracebackType(tb, stand_in.tb_frame, stand_in.tb_lasti, lineno)
    return tb


def _without_ember(tb, tail):
    """The caller's traceback without Ember's frames (ember.get and the client), then ``tail``."""
    kept = []
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(_EMBER_DIR):
            kept.append(tb)
        tb = tb.tb_next
    for entry in reversed(kept):
        tail = types.TracebackType(tail, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return tail


_stand_in_classes: dict = {}


def _stand_in_exception(name: str, module: str, message: str) -> BaseException:
    """An exception that prints as ``name: message``, for a chained remote exception whose own object
    did not travel."""
    kind = _stand_in_classes.get((name, module))
    if kind is None:
        kind = _stand_in_classes[(name, module)] = type(name.rpartition(".")[2], (Exception,), {})
        kind.__qualname__, kind.__module__ = name, module
    return kind(message)


def _with_chain(value: BaseException, chain: list) -> BaseException:
    """Link stand-ins for the remote chained exceptions behind ``value`` (nearest first), as Python
    links ``__cause__`` and ``__context__``, so the traceback shows them as a local chain would."""
    current = value
    for name, module, message, frames, how in chain:
        behind = _stand_in_exception(name, module, message)
        behind.__traceback__ = remote_traceback(frames)
        if how == "cause":
            current.__cause__ = behind
        else:
            current.__context__ = behind
            current.__suppress_context__ = False
        current = behind
    return value


def _where(error) -> str:
    parts = [f"{error.function_name}()" if error.function_name else "a task"]
    if error.pid:
        parts.append(f"pid {error.pid}")
    if error.node:
        parts.append(f"node {str(error.node)[:12]}")
    return "raised remotely in " + ", ".join(parts)


def render_task_error(error) -> list:
    """IPython's structured traceback (a list of strings) for a TaskError raised by ``ember.get``."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
        cause = error.cause if error.cause is not None else error
        if cause is not error:
            _with_chain(cause, getattr(error, "chain", ()))
        tb = _without_ember(error.__traceback__, remote_traceback(error.frames))
        if shell is None:
            lines = traceback.format_exception(type(cause), cause, tb)
        else:
            lines = shell.InteractiveTB.structured_traceback(type(cause), cause, tb)
        return [*lines, f"({_where(error)})"]
    except Exception:  # noqa: BLE001 - IPython would print "Unexpected exception formatting exception"
        return traceback.format_exception(type(error), error, error.__traceback__)
