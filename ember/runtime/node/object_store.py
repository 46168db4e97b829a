"""The shared-memory object store: object layout on disk, and the store's bookkeeping.

Each sealed object is one file in ``/dev/shm`` named after its node and object id. Writers fill it
with ``pwrite`` (the kernel copies straight into the page cache) and readers ``mmap`` it read-only,
so a numpy array read from the store is a view on shared memory: no copy, and not writable.

Layout of an object file::

    [8 bytes: header length][msgpack header: data length, buffer lengths][pad to 64]
    [pickle data][pad to 64][buffer 0][pad to 64][buffer 1]...

:class:`StoreState` is the node manager's bookkeeping as a plain state machine: it is told about
creations, accesses, pins and deletions and answers with the spills and restores to carry out, and
told when each copy finishes. It does no I/O, so its policy (capacity, least-recently-used spilling,
what waits for what) is tested without processes.
"""

import heapq
import mmap
import os
from collections import OrderedDict

import msgpack

from ember.exceptions import ObjectStoreFullError

SHM_DIR = "/dev/shm"
ALIGN = 64
LARGEST_REPORTED = 8  # objects listed per node in store stats (the object store widget shows them)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def store_prefix(node_id: bytes) -> str:
    """The name prefix of node ``node_id``'s store files in ``SHM_DIR`` (every process maps them by it)."""
    return f"ember-{node_id.hex()[:12]}"


def object_path(prefix: str, object_id: bytes) -> str:
    return f"{SHM_DIR}/{prefix}-{object_id.hex()}"


def layout(data: bytes, buffers: list) -> tuple[bytes, int]:
    """The file header for (data, buffers) and the total file size."""
    header = msgpack.packb([len(data), [memoryview(b).nbytes for b in buffers]])
    size = _align(8 + len(header)) + _align(len(data)) + sum(_align(memoryview(b).nbytes) for b in buffers)
    return header, size


def write_object(path: str, data: bytes, buffers: list, header: bytes | None = None, size: int | None = None) -> int:
    """Create the object file at ``path`` and fill it; returns its size in bytes."""
    if header is None:
        header, size = layout(data, buffers)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, size)
        pwrite_all(fd, len(header).to_bytes(8, "little") + header, 0)
        offset = _align(8 + len(header))
        for chunk in (data, *buffers):
            view = memoryview(chunk).cast("B")
            pwrite_all(fd, view, offset)
            offset += _align(view.nbytes)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return size


def pwrite_all(fd: int, view, offset: int) -> None:
    view = memoryview(view).cast("B")
    while view.nbytes:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def read_object(path: str) -> tuple[memoryview, list]:
    """Map the object file read-only; returns (data, buffers) as views on the mapping."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        mapping = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    view = memoryview(mapping)
    header_len = int.from_bytes(view[:8], "little")
    data_len, buffer_lens = msgpack.unpackb(view[8 : 8 + header_len])
    offset = _align(8 + header_len)
    data = view[offset : offset + data_len]
    offset += _align(data_len)
    buffers = []
    for n in buffer_lens:
        buffers.append(view[offset : offset + n])
        offset += _align(n)
    return data, buffers


class StoreState:
    """Capacity accounting and spilling decisions for one node's store.

    An object is in one of four places: ``in_memory`` (sealed in shared memory, least recently used
    first), ``spilling`` (being copied to disk: it still holds its shared memory), ``spilled`` (on
    disk only) or ``restoring`` (being copied back: its shared memory is taken already). Copies run
    off the node manager's loop, so the moves between these states are explicit: a copy is started
    by a decision here and finished by ``spill_done`` / ``restore_done`` (or their failures).

    ``create`` and ``restore`` choose objects to spill (least recently used, not pinned by a reader)
    when the new bytes do not fit. The bytes are granted at once only when they are free now; when
    they will be once spills in flight finish, the caller asks again after each finishes.
    """

    def __init__(self, capacity: int):
        if capacity <= 0:
            raise ValueError(f"object_store_memory must be positive, not {capacity}")
        self.capacity = capacity
        self.in_memory: OrderedDict[bytes, int] = OrderedDict()  # oid -> size, oldest first
        self.spilling: dict[bytes, int] = {}
        self.spilled: dict[bytes, int] = {}
        self.restoring: dict[bytes, int] = {}
        self.pins: dict[bytes, int] = {}  # oid -> readers that have it mapped (never spilled meanwhile)
        self.used = 0  # shared memory held: in memory, spilling and restoring
        self.spilled_bytes = 0
        self.reserved = 0  # bytes promised to writers that have not sealed yet

    @property
    def free(self) -> int:
        return self.capacity - self.used - self.reserved

    def _make_room(self, size: int, exclude: bytes | None = None, can_wait: bool = True) -> tuple[bool, list]:
        """(granted, objects to start spilling). Not granted: spills in flight will make room."""
        if size > self.capacity:
            raise ObjectStoreFullError(
                f"An object of {size} bytes cannot fit in the object store of {self.capacity} bytes "
                "(object_store_memory); raise object_store_memory or split the object."
            )
        if self.free >= size:
            return True, []
        coming = self.free + sum(self.spilling.values())  # free once the spills in flight finish
        to_spill = []
        for oid, oid_size in self.in_memory.items():
            if coming >= size:
                break
            if oid == exclude or self.pins.get(oid):
                continue
            to_spill.append(oid)
            coming += oid_size
        if coming < size:
            raise ObjectStoreFullError(
                f"The object store is full: {size} bytes requested, {self.free} free of {self.capacity}, and "
                "nothing left to spill (space is reserved by writers in progress or pinned by readers)."
            )
        for oid in to_spill:
            self.spilling[oid] = self.in_memory.pop(oid)
        # A caller that cannot wait (a transfer whose chunks are arriving) overdraws by the bytes in flight.
        return not can_wait, to_spill

    def create(self, oid: bytes, size: int, can_wait: bool = True) -> tuple[bool, list]:
        """Reserve ``size`` bytes for a new object: (granted, ids to start spilling). When not
        granted, nothing is reserved: ask again once a spill finishes."""
        granted, to_spill = self._make_room(size, can_wait=can_wait)
        if granted:
            self.reserved += size
        return granted, to_spill

    def sealed(self, oid: bytes, size: int) -> None:
        self.reserved -= size
        if oid in self.in_memory or oid in self.spilled or oid in self.spilling or oid in self.restoring:
            return
        self.in_memory[oid] = size
        self.used += size

    def abandoned(self, size: int) -> None:
        """A writer died between create and seal: give back what it had reserved."""
        self.reserved -= size

    def access(self, oid: bytes) -> None:
        if oid in self.in_memory:
            self.in_memory.move_to_end(oid)

    def pin(self, oid: bytes) -> bool:
        """A reader mapped the object: keep it in memory until ``unpin``. False if it is not in memory."""
        if oid not in self.in_memory:
            return False
        self.pins[oid] = self.pins.get(oid, 0) + 1
        self.in_memory.move_to_end(oid)
        return True

    def unpin(self, oid: bytes) -> None:
        count = self.pins.get(oid, 0) - 1
        if count > 0:
            self.pins[oid] = count
        else:
            self.pins.pop(oid, None)

    def restore(self, oid: bytes) -> tuple[str, list]:
        """A reader needs a spilled object back: (what now, ids to start spilling). What now is
        "memory" (it is there), "unknown", "start" (copy it back now: its bytes are taken),
        "restoring" (a copy back is running), or "wait" (ask again once a spill finishes: its own
        spill, or those that make room for it)."""
        if oid in self.in_memory:
            self.access(oid)
            return "memory", []
        if oid in self.restoring:
            return "restoring", []
        if oid in self.spilling:
            return "wait", []
        size = self.spilled.get(oid)
        if size is None:
            return "unknown", []
        granted, to_spill = self._make_room(size, exclude=oid)
        if not granted:
            return "wait", to_spill
        del self.spilled[oid]
        self.spilled_bytes -= size
        self.restoring[oid] = size
        self.used += size
        return "start", to_spill

    def spill_done(self, oid: bytes, ok: bool = True) -> bool:
        """A copy to disk finished (or failed: the object stays in memory). False if the object was
        deleted meanwhile: its disk copy is garbage."""
        size = self.spilling.pop(oid, None)
        if size is None:
            return False
        if ok:
            self.used -= size
            self.spilled[oid] = size
            self.spilled_bytes += size
        else:
            self.in_memory[oid] = size
        return True

    def restore_done(self, oid: bytes, ok: bool = True) -> bool:
        """A copy back from disk finished (or failed: it stays on disk). False if the object was
        deleted meanwhile: the copy in memory is garbage."""
        size = self.restoring.pop(oid, None)
        if size is None:
            return False
        if ok:
            self.in_memory[oid] = size
        else:
            self.used -= size
            self.spilled[oid] = size
            self.spilled_bytes += size
        return True

    def delete(self, oid: bytes) -> str | None:
        """Forget an object; returns where it was ("memory", "spilling", "spilled", "restoring") or None.
        A copy still running for it finds it gone when it finishes."""
        self.pins.pop(oid, None)
        for where, table in (("memory", self.in_memory), ("spilling", self.spilling), ("restoring", self.restoring)):
            size = table.pop(oid, None)
            if size is not None:
                self.used -= size
                return where
        size = self.spilled.pop(oid, None)
        if size is not None:
            self.spilled_bytes -= size
            return "spilled"
        return None

    def holds(self, oid: bytes) -> bool:
        return oid in self.in_memory or oid in self.spilled or oid in self.spilling or oid in self.restoring

    def stats(self) -> dict:
        return {
            "capacity": self.capacity,
            "used": self.used,
            "num_objects": len(self.in_memory) + len(self.spilling),
            "spilled": self.spilled_bytes,
            "num_spilled": len(self.spilled),
            "spilling": len(self.spilling),
            "restoring": len(self.restoring),
            "pinned": len(self.pins),
            "reserved": self.reserved,
            # For the object store widget: the few largest objects held in memory (id, bytes).
            "largest": [
                [oid, size] for oid, size in heapq.nlargest(LARGEST_REPORTED, self.in_memory.items(), key=_size)
            ],
        }


def _size(item: tuple) -> int:
    return item[1]
