"""The shared-memory object store: object layout on disk, and the store's bookkeeping.

Each sealed object is one file in ``/dev/shm`` named after its node and object id. Writers fill it
with ``pwrite`` (the kernel copies straight into the page cache) and readers ``mmap`` it read-only,
so a numpy array read from the store is a view on shared memory: no copy, and not writable.

Layout of an object file::

    [8 bytes: header length][msgpack header: data length, buffer lengths][pad to 64]
    [pickle data][pad to 64][buffer 0][pad to 64][buffer 1]...

:class:`StoreState` is the node manager's bookkeeping as a plain state machine: it is told about
creations, accesses and deletions and answers with the spills and restores to carry out. It does no
I/O, so its policy (capacity, least-recently-used spilling) is tested without processes.
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

    Objects are in memory or spilled. ``create``, ``restore`` and ``access`` return the list of
    object ids to spill first (least recently used first) so the new bytes fit.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.in_memory: OrderedDict[bytes, int] = OrderedDict()  # oid -> size, oldest first
        self.spilled: dict[bytes, int] = {}
        self.used = 0
        self.spilled_bytes = 0
        self.reserved = 0  # bytes promised to writers that have not sealed yet

    def _make_room(self, size: int, exclude: bytes | None = None) -> list[bytes]:
        if size > self.capacity:
            raise ObjectStoreFullError(
                f"An object of {size} bytes cannot fit in the object store of {self.capacity} bytes "
                "(object_store_memory); raise object_store_memory or split the object."
            )
        to_spill = []
        free = self.capacity - self.used - self.reserved
        for oid, oid_size in self.in_memory.items():
            if free >= size:
                break
            if oid == exclude:
                continue
            to_spill.append(oid)
            free += oid_size
        if free < size:
            raise ObjectStoreFullError(
                f"The object store is full: {size} bytes requested, {self.capacity - self.used - self.reserved} free "
                f"of {self.capacity}, and nothing left to spill (space is reserved by writers in progress)."
            )
        for oid in to_spill:
            self._spill(oid)
        return to_spill

    def _spill(self, oid: bytes) -> None:
        size = self.in_memory.pop(oid)
        self.used -= size
        self.spilled[oid] = size
        self.spilled_bytes += size

    def create(self, oid: bytes, size: int) -> list[bytes]:
        """Reserve ``size`` bytes for a new object; returns ids to spill first."""
        to_spill = self._make_room(size)
        self.reserved += size
        return to_spill

    def sealed(self, oid: bytes, size: int) -> None:
        self.reserved -= size
        if oid in self.in_memory or oid in self.spilled:
            return
        self.in_memory[oid] = size
        self.used += size

    def abandoned(self, size: int) -> None:
        """A writer died between create and seal: give back what it had reserved."""
        self.reserved -= size

    def access(self, oid: bytes) -> None:
        if oid in self.in_memory:
            self.in_memory.move_to_end(oid)

    def restore(self, oid: bytes) -> list[bytes]:
        """Bring a spilled object back; returns ids to spill first. Unknown or in-memory: []."""
        size = self.spilled.get(oid)
        if size is None:
            self.access(oid)
            return []
        to_spill = self._make_room(size, exclude=oid)
        del self.spilled[oid]
        self.spilled_bytes -= size
        self.in_memory[oid] = size
        self.used += size
        return to_spill

    def delete(self, oid: bytes) -> str | None:
        """Forget an object; returns where it was ("memory", "spilled") or None."""
        size = self.in_memory.pop(oid, None)
        if size is not None:
            self.used -= size
            return "memory"
        size = self.spilled.pop(oid, None)
        if size is not None:
            self.spilled_bytes -= size
            return "spilled"
        return None

    def stats(self) -> dict:
        return {
            "capacity": self.capacity,
            "used": self.used,
            "num_objects": len(self.in_memory),
            "spilled": self.spilled_bytes,
            "num_spilled": len(self.spilled),
            "reserved": self.reserved,
            # For the object store widget: the few largest objects held in memory (id, bytes).
            "largest": [
                [oid, size] for oid, size in heapq.nlargest(LARGEST_REPORTED, self.in_memory.items(), key=_size)
            ],
        }


def _size(item: tuple) -> int:
    return item[1]
