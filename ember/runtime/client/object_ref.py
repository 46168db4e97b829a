"""ObjectRef and ObjectRefGenerator: handles to values that exist, or will exist, in the cluster."""

import concurrent.futures

from ember.runtime import serialization
from ember.runtime.ids import task_id_of


def _client():
    from ember.runtime.client.core_client import current_client

    return current_client().objects


class ObjectRef:
    """A reference to an object: its id and the address of its owner (the process that made it).

    While any ObjectRef to an object exists in any process, the object is kept; when the last one
    is gone, the owner frees it everywhere.
    """

    __slots__ = ("_id", "_owner", "_client", "__weakref__")

    def __init__(self, object_id: bytes, owner: str, client=None, _counted: bool = True):
        self._id = object_id
        self._owner = owner
        # The process's Ownership (``client.objects``); a CoreClient passed in stands for its objects.
        self._client = getattr(client, "objects", client) if client is not None else _client()
        if _counted:
            self._client.add_local_reference(self)

    def __del__(self):
        try:
            self._client.remove_local_reference(self._id)
        except Exception:  # interpreter shutdown
            pass

    def __reduce__(self):
        serialization.record_contained_ref(self)
        return _rebuild, (self._id, self._owner)

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def task_id(self) -> bytes:
        """The id of the task that makes this object (a put is a task of its own)."""
        return task_id_of(self._id)

    def owner_address(self) -> str:
        return self._owner

    def __repr__(self):
        return f"ObjectRef({self._id.hex()})"

    def __eq__(self, other):
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self):
        return hash(self._id)

    def future(self) -> concurrent.futures.Future:
        """A concurrent.futures.Future that completes with the object's value (or its error)."""
        return self._client.future_for(self)

    def __await__(self):
        import asyncio  # not at module level: it costs 30 ms of every process's start-up

        return asyncio.wrap_future(self.future()).__await__()


def _rebuild(object_id: bytes, owner: str) -> ObjectRef:
    return ObjectRef(object_id, owner)


class ObjectRefGenerator:
    """What a ``num_returns="streaming"`` task returns: yields an ObjectRef per value as the task
    yields it, while the task is still running."""

    def __init__(self, stream, client):
        self._stream = stream
        self._client = client
        self._next = 0

    def __iter__(self):
        return self

    def __next__(self) -> ObjectRef:
        ref = self._client.next_stream_item(self._stream, self._next, timeout=None)
        if ref is None:
            raise StopIteration
        self._next += 1
        return ref

    def __aiter__(self):
        return self

    async def __anext__(self) -> ObjectRef:
        import asyncio

        loop = asyncio.get_running_loop()
        ref = await loop.run_in_executor(None, self._client.next_stream_item, self._stream, self._next, None)
        if ref is None:
            raise StopAsyncIteration
        self._next += 1
        return ref

    def __repr__(self):
        return f"ObjectRefGenerator(task={self._stream.task_id.hex()})"

    def _task_id(self) -> bytes:
        return self._stream.task_id

    def _is_ready(self, client) -> bool:
        """For ``ember.wait``: ``next()`` would not block (its next value is ready, or it has ended)."""
        from ember.runtime.client.ownership import PENDING

        items = self._stream.items
        if len(items) > self._next:
            return client.state_of(items[self._next])[0] != PENDING
        return self._stream.done

    def is_finished(self) -> bool:
        """Whether the task ended and every ref it yielded has been taken by ``next()``."""
        return self._stream.done and len(self._stream.items) <= self._next


class DynamicObjectRefGenerator:
    """The value of a ``num_returns="dynamic"`` task: iterate it for one ObjectRef per value the task
    yielded. The refs are nested in the task's return object, so they stay valid while it (or this
    generator, or any of the refs) is held, and are freed with it."""

    def __init__(self, refs):
        self._refs = list(refs)

    def __iter__(self):
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self):
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"
