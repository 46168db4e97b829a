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

Recycled files. A fresh tmpfs page costs the writer a page allocation and zeroing on top of the copy:
writing 1.9 GB of decoded Parquet into fresh files took 1.5 CPU-s more than decoding it, into files
whose pages an earlier object had faulted in 0.55 (``benchmarks/data_floor.py``). So the file of a
deleted object of at least ``RECYCLE_MIN`` bytes that no reader maps goes to a small pool, and a
writer of a large object is handed one to rename into place. Whether a reader maps a file is told
by the file itself: a reader takes a shared ``flock`` before it maps and the lock lasts as long as the
mapping (the mapping holds the open file, and ``flock`` locks go with the open file, not the
descriptor); the node manager renames a deleted file away and keeps it only if it gets the
exclusive lock, which it holds while the file waits in the pool. A reader that opened the file
before it was renamed away sees the name gone (or naming another file) once it holds its lock, and
treats the object as gone, as it is.
"""

import fcntl
import heapq
import mmap
import os
from collections import OrderedDict

import msgpack

from ember.exceptions import ObjectStoreFullError

SHM_DIR = "/dev/shm"
ALIGN = 64
LARGEST_REPORTED = 8  # objects listed per node in store stats (the object store widget shows them)
RECYCLE_MIN = 1 << 20  # smaller files are not worth a pool place: their fresh pages cost little
POOL_FILES = 8  # files kept for reuse at most
POOL_SHARE = 8  # ... holding at most this fraction (1/POOL_SHARE) of the store's capacity
POOL_IDLE = 5.0  # seconds a file waits in the pool before it is freed (an idle node gives its memory back)


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


def write_object(
    path: str,
    data: bytes,
    buffers: list,
    header: bytes | None = None,
    size: int | None = None,
    reuse: str | None = None,
) -> int:
    """Create the object file at ``path`` and fill it; returns its size in bytes. ``reuse``: the name
    (in ``SHM_DIR``) of a recycled file the node manager handed us, renamed into place if still there."""
    if header is None:
        header, size = layout(data, buffers)
    fd = None
    if reuse is not None and os.path.basename(reuse) == reuse:
        try:
            os.rename(f"{SHM_DIR}/{reuse}", path)
            fd = os.open(path, os.O_RDWR)
        except OSError:
            fd = None  # gone meanwhile (the node manager stopped): a fresh file then
    if fd is None:
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
    """Map the object file read-only; returns (data, buffers) as views on the mapping. Raises
    FileNotFoundError if the object is not (or no longer) there."""
    mapping = map_object(path)
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


def map_object(path: str) -> mmap.mmap:
    """Map an object file read-only, under the shared lock that keeps it from being recycled for as
    long as the mapping lives (see the module docstring). FileNotFoundError if it is gone."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FileNotFoundError(f"{path} is being recycled: its object was deleted") from None
        stat = os.fstat(fd)
        if not stat.st_size:  # never a whole object (a header at least): one being written, or junk
            raise FileNotFoundError(f"{path} is empty")
        mapping = mmap.mmap(fd, stat.st_size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    try:
        same = os.stat(path).st_ino == stat.st_ino
    except FileNotFoundError:
        same = False
    if not same:  # renamed away (deleted, maybe recycled) between our open and our lock
        mapping.close()
        raise FileNotFoundError(f"{path} was deleted while it was being mapped")
    return mapping


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

    The pool of recycled files (``recycle``, ``reuse``, ``expire``) counts against the capacity like
    objects do; its files are the first to go when room is needed, before any object is spilled, and
    the caller frees those it is told of by ``take_evicted``.
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
        self.pool: OrderedDict[str, tuple[int, float]] = OrderedDict()  # path -> (size, pooled at), oldest first
        self.pooled = 0
        self.pool_limit = capacity // POOL_SHARE
        self._evicted: list[str] = []  # pooled files to free, for the caller (take_evicted)

    @property
    def free(self) -> int:
        return self.capacity - self.used - self.reserved - self.pooled

    def recycle(self, path: str, size: int, now: float) -> bool:
        """The file of a deleted object, which no reader maps, offered for reuse: True if the pool
        keeps it (older files may make way: see ``take_evicted``), False if the caller frees it."""
        if size < RECYCLE_MIN or size > self.pool_limit or path in self.pool:
            return False
        while self.pool and (len(self.pool) >= POOL_FILES or self.pooled + size > self.pool_limit):
            self._evict_oldest()
        self.pool[path] = (size, now)
        self.pooled += size
        return True

    def reuse(self, size: int) -> str | None:
        """A pooled file for a new object of ``size`` bytes, taken out of the pool: the smallest that
        holds it, else the largest (its pages cover the object's start); None if none or too small an
        object."""
        if size < RECYCLE_MIN or not self.pool:
            return None
        fitting = [(pooled, path) for path, (pooled, _) in self.pool.items() if pooled >= size]
        _, path = min(fitting) if fitting else max((pooled, path) for path, (pooled, _) in self.pool.items())
        self.pooled -= self.pool.pop(path)[0]
        return path

    def expire(self, now: float) -> list[str]:
        """Pooled files unused for POOL_IDLE seconds, taken out of the pool for the caller to free."""
        expired = [path for path, (_, since) in self.pool.items() if now - since >= POOL_IDLE]
        for path in expired:
            self.pooled -= self.pool.pop(path)[0]
        return expired

    def take_evicted(self) -> list[str]:
        """Pooled files that had to make way (for room, or for a newer file): the caller frees them."""
        evicted, self._evicted = self._evicted, []
        return evicted

    def _evict_oldest(self) -> None:
        path, (size, _) = self.pool.popitem(last=False)
        self.pooled -= size
        self._evicted.append(path)

    def _make_room(self, size: int, exclude: bytes | None = None, can_wait: bool = True) -> tuple[bool, list]:
        """(granted, objects to start spilling). Not granted: spills in flight will make room."""
        if size > self.capacity:
            raise ObjectStoreFullError(
                f"An object of {size} bytes cannot fit in the object store of {self.capacity} bytes "
                "(object_store_memory); raise object_store_memory or split the object."
            )
        while self.free < size and self.pool:  # recycled files go before any object is spilled
            self._evict_oldest()
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
            "pooled": self.pooled,
            # For the object store widget: the few largest objects held in memory (id, bytes).
            "largest": [
                [oid, size] for oid, size in heapq.nlargest(LARGEST_REPORTED, self.in_memory.items(), key=_size)
            ],
        }


def _size(item: tuple) -> int:
    return item[1]
