"""Exceptions raised by Ember, named and behaving as Ray's ``ray.exceptions``.

A task that raises reaches its caller as a :class:`TaskError` that is *also* an instance of the
user's own exception class, so ``except ValueError`` around ``ember.get`` works as it would locally,
and the message carries the remote traceback.
"""


class EmberError(Exception):
    """Base class of every Ember error."""


class TaskError(EmberError):
    """A task or actor method raised; ``cause`` is the original exception.

    ``ember.get`` raises an instance of a class deriving from both TaskError and the type of
    ``cause`` (see :meth:`as_instanceof_cause`). ``frames`` are the user's frames on the worker, as
    (filename, line number, function name, source line) tuples: Ember's own frames (the worker loop,
    ``run_user_code``) are left out unless the failure was Ember's (e.g. a result that cannot be
    pickled). ``chain`` describes the exceptions the cause was chained to (``raise ... from``).
    """

    def __init__(
        self,
        function_name: str = "",
        traceback_str: str = "",
        cause=None,
        pid=None,
        node=None,
        frames=None,
        chain=None,
    ):
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        self.node = node
        self.frames = list(frames or ())
        self.chain = list(chain or ())
        super().__init__(function_name, traceback_str)

    def __str__(self):
        where = f" (pid={self.pid})" if self.pid else ""
        return f"{self.function_name}(){where} failed:\n{_with_local_source(self.traceback_str, self.frames).rstrip()}"

    def __reduce__(self):
        return (
            _rebuild_task_error,
            (self.function_name, self.traceback_str, self.cause, self.pid, self.node, self.frames, self.chain),
        )

    def _render_traceback_(self) -> list:
        """What IPython shows for this error: the caller's cell, then the task's frames as frames of
        the cells (or files) they were defined in, each with its source line; no Ember frame."""
        from ember.kernel_ext.tracebacks import render_task_error

        return render_task_error(self)

    def as_instanceof_cause(self):
        """Return an exception that is an instance of both TaskError and ``type(self.cause)``."""
        cause_cls = type(self.cause) if self.cause is not None else None
        if cause_cls is None or issubclass(cause_cls, TaskError):
            return self
        derived = _derived_class(cause_cls)
        try:
            error = cause_cls.__new__(derived)
        except Exception:
            return self
        # Copy the cause's state, then TaskError's, without running either __init__ (a user class
        # may take arguments we cannot know).
        try:
            error.__dict__.update(getattr(self.cause, "__dict__", {}))
        except Exception:
            pass
        error.args = self.cause.args
        error.function_name = self.function_name
        error.traceback_str = self.traceback_str
        error.cause = self.cause
        error.pid = self.pid
        error.node = self.node
        error.frames = self.frames
        error.chain = self.chain
        return error


def _rebuild_task_error(function_name, traceback_str, cause, pid, node, frames=None, chain=None):
    return TaskError(function_name, traceback_str, cause, pid, node, frames, chain)


def _with_local_source(text: str, frames: list) -> str:
    """The worker's traceback text with the source lines it lacked filled in from this process.

    A function defined in a notebook cell has its source only in the kernel's ``linecache``; the
    worker printed its frames without their lines.
    """
    import linecache

    for filename, lineno, name, line in frames:
        if line or not lineno:
            continue
        source = linecache.getline(filename, lineno).strip()
        if source:
            header = f'  File "{filename}", line {lineno}, in {name}\n'
            text = text.replace(header, f"{header}    {source}\n", 1)
    return text


_derived_classes: dict = {}


def _derived_class(cause_cls):
    derived = _derived_classes.get(cause_cls)
    if derived is None:
        try:
            # Named as the user's class, so a traceback's last line and a notebook's error name read
            # "ValueError: ..." as they would locally; it is still a TaskError for `except`.
            derived = type(
                cause_cls.__name__,
                (TaskError, cause_cls),
                {
                    "__str__": TaskError.__str__,
                    "__reduce__": TaskError.__reduce__,
                    "__init__": TaskError.__init__,
                    "_render_traceback_": TaskError._render_traceback_,
                },
            )
            derived.__qualname__ = cause_cls.__qualname__
        except TypeError:  # incompatible layouts, e.g. two C base classes
            derived = TaskError
        else:
            derived.__module__ = cause_cls.__module__
        _derived_classes[cause_cls] = derived
    return derived


class WorkerCrashedError(EmberError):
    """The worker running the task died unexpectedly (and the task ran out of retries)."""


class ActorError(EmberError):
    """Base class for actor failures."""


class ActorDiedError(ActorError):
    """The actor is dead: killed, crashed past ``max_restarts``, or its constructor raised."""

    def __init__(self, message: str = "The actor died unexpectedly.", actor_id: str | None = None):
        self.actor_id = actor_id
        super().__init__(message)


class ActorUnavailableError(ActorError):
    """The actor is restarting; the call may be retried."""


class ObjectLostError(EmberError):
    """The object's value is lost (its owner or every copy died) and it cannot be rebuilt."""

    def __init__(self, object_id_hex: str = "", reason: str = ""):
        self.object_id_hex = object_id_hex
        super().__init__(f"Object {object_id_hex} is lost. {reason}".strip())


class OwnerDiedError(ObjectLostError):
    """The process that owned the object died."""


class ObjectFreedError(ObjectLostError):
    """The object was freed explicitly."""


class GetTimeoutError(EmberError, TimeoutError):
    """``ember.get`` did not finish within its timeout."""


class TaskCancelledError(EmberError):
    """The task was cancelled with ``ember.cancel``."""


class TaskUnschedulableError(EmberError):
    """The task cannot be scheduled: e.g. a hard node affinity to a node that is dead."""


class ObjectStoreFullError(EmberError, MemoryError):
    """The object cannot fit in the object store even after spilling everything else."""


class RuntimeEnvSetupError(EmberError):
    """The runtime environment of a task or actor could not be set up."""


# Ray spells some names with its own prefix; these aliases let `import ember as ray` code that
# catches ray.exceptions.RayTaskError keep working.
RayError = EmberError
RayTaskError = TaskError
RayActorError = ActorError
