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
    ``cause`` (see :meth:`as_instanceof_cause`).
    """

    def __init__(self, function_name: str = "", traceback_str: str = "", cause=None, pid=None, node=None):
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        self.node = node
        super().__init__(function_name, traceback_str)

    def __str__(self):
        where = f" (pid={self.pid})" if self.pid else ""
        return f"{self.function_name}(){where} failed:\n{self.traceback_str.rstrip()}"

    def __reduce__(self):
        return (_rebuild_task_error, (self.function_name, self.traceback_str, self.cause, self.pid, self.node))

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
        return error


def _rebuild_task_error(function_name, traceback_str, cause, pid, node):
    return TaskError(function_name, traceback_str, cause, pid, node)


_derived_classes: dict = {}


def _derived_class(cause_cls):
    derived = _derived_classes.get(cause_cls)
    if derived is None:
        try:
            derived = type(
                f"TaskError({cause_cls.__name__})",
                (TaskError, cause_cls),
                {
                    "__str__": TaskError.__str__,
                    "__reduce__": TaskError.__reduce__,
                    "__init__": TaskError.__init__,
                },
            )
        except TypeError:  # incompatible layouts, e.g. two C base classes
            derived = TaskError
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
