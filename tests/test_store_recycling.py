"""Recycled object files: the store's pool as a state machine, the readers' lock that keeps a mapped
file out of it, and a real cluster reusing the pages of freed objects without touching live views."""

import fcntl
import json
import os

import pytest
from conftest import run_driver

from ember.runtime.node import object_store
from ember.runtime.node.object_store import POOL_FILES, POOL_IDLE, RECYCLE_MIN, StoreState, map_object

MIB = 1 << 20


def test_the_pool_counts_against_the_capacity_and_gives_way_before_any_spill():
    store = StoreState(64 * MIB)  # pool limit: 8 MiB
    assert store.create(b"a", 4 * MIB) == (True, [])
    store.sealed(b"a", 4 * MIB)
    assert store.delete(b"a") == "memory"
    assert store.recycle("/dev/shm/a.gone1", 4 * MIB, now=0.0)
    assert store.stats()["pooled"] == 4 * MIB and store.free == 60 * MIB
    # A new object that needs the pool's room evicts it (the caller frees it) rather than spilling.
    assert store.create(b"b", 62 * MIB) == (True, [])
    assert store.take_evicted() == ["/dev/shm/a.gone1"]
    assert store.pooled == 0 and store.take_evicted() == []


def test_the_pool_hands_out_the_best_fit_and_refuses_what_is_small_or_too_large():
    store = StoreState(1024 * MIB)  # pool limit: 128 MiB
    assert not store.recycle("/dev/shm/tiny", RECYCLE_MIN - 1, now=0.0)  # not worth a place
    assert not store.recycle("/dev/shm/huge", 129 * MIB, now=0.0)  # more than the pool may hold
    for name, size in (("p16", 16), ("p48", 48), ("p32", 32)):
        assert store.recycle(f"/dev/shm/{name}", size * MIB, now=0.0)
    assert store.reuse(RECYCLE_MIN - 1) is None  # small objects take fresh files
    assert store.reuse(20 * MIB) == "/dev/shm/p32"  # the smallest that holds it
    assert store.reuse(100 * MIB) == "/dev/shm/p48"  # none holds it: the largest
    assert store.reuse(2 * MIB) == "/dev/shm/p16"
    assert store.reuse(2 * MIB) is None and store.pooled == 0


def test_the_pool_keeps_a_few_files_and_frees_them_when_idle():
    store = StoreState(1024 * MIB)
    for i in range(POOL_FILES + 2):
        assert store.recycle(f"/dev/shm/f{i}", 2 * MIB, now=float(i))
    assert store.take_evicted() == ["/dev/shm/f0", "/dev/shm/f1"]  # the oldest made way
    assert len(store.pool) == POOL_FILES
    assert store.expire(now=2.0 + POOL_IDLE) == ["/dev/shm/f2"]
    assert sorted(store.expire(now=100.0)) == sorted(f"/dev/shm/f{i}" for i in range(3, POOL_FILES + 2))
    assert store.pooled == 0 and store.stats()["pooled"] == 0


@pytest.fixture
def object_file(tmp_path):
    path = str(tmp_path / "object")
    with open(path, "wb") as f:
        f.write(b"x" * 4096)
    return path


def test_a_reader_cannot_map_a_file_that_waits_in_the_pool(object_file):
    fd = os.open(object_file, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the node manager holds a pooled file
        with pytest.raises(FileNotFoundError, match="recycled"):
            map_object(object_file)
    finally:
        os.close(fd)
    mapping = map_object(object_file)
    # The reader's lock lasts as long as its mapping, descriptor closed or not: no recycling meanwhile.
    fd = os.open(object_file, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        mapping.close()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_a_reader_that_opened_a_file_before_it_was_renamed_away_lets_go(object_file, monkeypatch):
    real_flock = fcntl.flock

    def renamed_meanwhile(fd, operation):
        # Between the reader's open and its lock: the node manager renames the deleted file away,
        # and a new object is written under the same name (a rebuilt object keeps its id).
        os.rename(object_file, object_file + ".gone1")
        with open(object_file, "wb") as f:
            f.write(b"y" * 4096)
        return real_flock(fd, operation)

    monkeypatch.setattr(object_store.fcntl, "flock", renamed_meanwhile)
    with pytest.raises(FileNotFoundError, match="deleted while"):
        map_object(object_file)


def test_freed_objects_pages_are_reused_and_a_live_view_is_never_overwritten():
    result = run_driver(
        """
import gc, json, os, time
import numpy as np
import ember
from ember.runtime.client.core_client import current_client
from ember.runtime.node.object_store import object_path
from ember.runtime.client.ownership import store_prefix
ember.init(num_cpus=1, object_store_memory=512 * 2**20)
client = current_client()
path = lambda ref: object_path(store_prefix(client.node_id), ref._id)

def inode_after_free(ref):
    inode = os.stat(path(ref)).st_ino
    del ref
    gc.collect()
    return inode

def wait_pooled(inode):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # a freed file is renamed away: pooled (kept) or unlinked
        if any(os.stat(os.path.join("/dev/shm", n)).st_ino == inode
               for n in os.listdir("/dev/shm") if ".gone" in n):
            return True
        time.sleep(0.01)
    return False

out = {}
# 1. A freed object whose value nobody holds: its file comes back for the next object of its size.
inode = inode_after_free(ember.put(np.full(2 * 2**20, 1.0)))  # 16 MiB
out["pooled"] = wait_pooled(inode)
second = ember.put(np.full(2 * 2**20, 2.0))
out["reused"] = os.stat(path(second)).st_ino == inode
out["second"] = float(ember.get(second).sum())

# 2. A freed object whose value is still held (a view on its mapping): never recycled.
kept_ref = ember.put(np.full(2 * 2**20, 3.0))
kept_inode = os.stat(path(kept_ref)).st_ino
view = ember.get(kept_ref)
del kept_ref
gc.collect()
fresh = [ember.put(np.full(2 * 2**20, 4.0 + i)) for i in range(12)]
out["view_intact"] = bool((view == 3.0).all())
out["view_file_not_reused"] = all(os.stat(path(r)).st_ino != kept_inode for r in fresh)
out["fresh"] = [float(ember.get(r)[0]) for r in fresh]
print(json.dumps(out))
ember.shutdown()
""",
        timeout=180,
    )
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out == {
        "pooled": True,
        "reused": True,
        "second": 2.0 * 2 * MIB,
        "view_intact": True,
        "view_file_not_reused": True,
        "fresh": [4.0 + i for i in range(12)],
    }
