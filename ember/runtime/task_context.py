"""What a running task knows about itself, carried in a context variable.

A context variable (not a thread-local) so that each asyncio task of an async actor, and each
thread of a threaded actor, sees the call it is running.
"""

import contextvars
from dataclasses import dataclass, field


@dataclass
class TaskContext:
    """What a running task knows about itself (see ``ember.get_runtime_context``)."""

    task_id: bytes | None = None
    name: str = ""
    job_id: bytes | None = None
    actor_id: bytes | None = None
    assigned: dict = field(default_factory=dict)
    gpu_ids: list = field(default_factory=list)
    holds_cpu: bool = False
    borrowed: list | None = None
    actor_info: tuple | None = None  # (actor id, class name, method metadata) inside an actor
    placement_group: list | None = None  # [pg hex, bundle index, capture child tasks] inside a group
    output_tag: object = None  # where the driver shows this task's prints (see ``output_tag``)


class ActorExit(BaseException):
    """Raised by ``ember.actor.exit_actor()``; a BaseException so user code does not swallow it."""


current_task: contextvars.ContextVar = contextvars.ContextVar("ember_current_task", default=None)

# Set by the driver (the notebook extension sets it per cell): tasks submitted while it is set, and the
# tasks and actor calls they submit in turn, carry it, and their log lines come back tagged with it.
output_tag: contextvars.ContextVar = contextvars.ContextVar("ember_output_tag", default=None)
