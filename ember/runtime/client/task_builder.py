"""Building a task's spec on the caller's thread: its id, header and pickled arguments.

Top-level ObjectRef arguments are swapped for :class:`Arg` placeholders, replaced by their values on
the worker; arguments too large to travel inline go to the object store once (Ray's implicit put).
"""

import pickle

from ember.runtime.client.object_ref import ObjectRef
from ember.runtime.client.ownership import INLINE_LIMIT
from ember.runtime.client.task_spec import Arg, Stream, TaskSpec
from ember.runtime.ids import new_task_id, return_object_id
from ember.runtime.serialization import serialize
from ember.runtime.task_context import current_task, output_tag


def build_spec(client, objects, name, num_returns, args, kwargs, header: dict) -> TaskSpec:
    """A new task's spec: ``header`` (its op and options) gets the fields every task carries."""
    spec = TaskSpec()
    spec.task_id = task_id = new_task_id()
    spec.name = name
    context = current_task.get()
    spec.parent = context.task_id if context else None
    # A task submitted by a task belongs to the same job (its logs, runtime_env and actors).
    job = context.job_id if context is not None and context.job_id else client.job_id
    header.update(rid=task_id, tname=name, job=job, owner=client.address, owner_id=client.client_id)
    header["owner_node"] = client.node_id
    tag = context.output_tag if context is not None else output_tag.get()
    if tag is not None:
        header["tag"] = tag
    spec.header = header
    _pickle_arguments(objects, spec, args, kwargs, name)
    if num_returns == "streaming":
        spec.stream = Stream(task_id)
        spec.return_ids = []
    elif num_returns == "dynamic":
        spec.stream = Stream(task_id, dynamic=True)
        spec.return_ids = [return_object_id(task_id, 1)]
    else:
        spec.return_ids = [return_object_id(task_id, i + 1) for i in range(num_returns)]
    return spec


_NO_ARGUMENTS = pickle.dumps(((), {}), protocol=5)  # what serialize() makes of a call without arguments


def _pickle_arguments(objects, spec: TaskSpec, args, kwargs, name: str) -> None:
    if not args and not kwargs:
        # The common no-argument call (an actor's getter, a task that reads its own input): nothing
        # to look at or pickle again.
        spec.keepalive, spec.refs = [], []
        spec.header["nbuf"] = 0
        spec.frames = [_NO_ARGUMENTS]
        return
    refs = []
    if any(type(a) is ObjectRef for a in args):
        args = tuple(_swap(a, i, refs) for i, a in enumerate(args))
    if kwargs and any(type(v) is ObjectRef for v in kwargs.values()):
        kwargs = {k: _swap(v, k, refs) for k, v in kwargs.items()}
    data, buffers, contained = serialize((args, kwargs), f"the arguments of {name}")
    spec.keepalive = [ref for _, ref in refs] + contained
    spec.refs = refs
    size = len(data) + sum(b.nbytes for b in buffers)
    if size > INLINE_LIMIT:
        # Large arguments go through the store once, as Ray's implicit put does.
        ref = objects.put_serialized(data, buffers)
        spec.keepalive.append(ref)
        spec.header["argobj"] = [ref._id, objects.entry(ref._id).node_id]
        spec.frames = []
    else:
        spec.header["nbuf"] = len(buffers)
        spec.frames = [data, *[bytes(b) for b in buffers]]


def _swap(value, key, refs):
    if type(value) is ObjectRef:
        refs.append((key, value))
        return Arg(key)
    return value
