"""Objects: zero-copy reads from shared memory, reference counting, spilling, store limits."""

import gc
import glob
import os

import numpy as np
import pyarrow as pa
import pytest
from conftest import run_driver, wait_for

import ember
from ember import api


def store_files() -> set:
    return set(glob.glob(f"/dev/shm/{api._cluster_process.store_prefix}-*"))


def wait_freed(created: set, what: str) -> None:
    """Wait until the store files in ``created`` are gone (after the test dropped its refs)."""
    gc.collect()
    wait_for(lambda: not (store_files() & created), message=f"{what} to be freed")


def shared_mapping_of(address: int) -> str | None:
    """The file mapped at ``address`` in this process, from /proc/self/maps."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            start, end = (int(x, 16) for x in parts[0].split("-"))
            if start <= address < end:
                return parts[5] if len(parts) > 5 else None
    return None


def test_get_of_numpy_array_is_a_read_only_view_on_shared_memory(cluster):
    array = np.random.default_rng(0).random(1_000_000)
    value = ember.get(ember.put(array))
    np.testing.assert_array_equal(value, array)
    assert not value.flags.owndata
    assert not value.flags.writeable
    mapped = shared_mapping_of(value.ctypes.data)
    assert mapped is not None and mapped.startswith("/dev/shm/ember-")


def test_one_gib_array_is_mapped_not_copied(cluster):
    import psutil

    array = np.ones(2**27, dtype=np.float64)  # 1 GiB
    ref = ember.put(array)
    del array
    gc.collect()
    rss_before = psutil.Process().memory_info().rss
    value = ember.get(ref)
    rss_after = psutil.Process().memory_info().rss
    assert value.nbytes == 2**30
    assert shared_mapping_of(value.ctypes.data).startswith("/dev/shm/ember-")
    # A copy would have touched every page (1 GiB of RSS); mapping touches none until read.
    assert rss_after - rss_before < 64 * 2**20
    assert value[123456] == 1.0


def test_arrow_table_is_zero_copy(cluster):
    table = pa.table({"x": np.arange(1_000_000), "y": np.arange(1_000_000) * 0.5})
    value = ember.get(ember.put(table))
    assert value.equals(table)
    buffer = value.column("x").chunks[0].buffers()[1]
    assert shared_mapping_of(buffer.address).startswith("/dev/shm/ember-")


def test_objects_are_freed_when_unreferenced(cluster):
    before = store_files()
    ref = ember.put(np.zeros(1_000_000))
    created = store_files() - before
    assert len(created) == 1
    del ref
    wait_freed(created, "the object's shared memory")


def test_task_results_are_freed_when_unreferenced(cluster):
    @ember.remote
    def big():
        return np.zeros(1_000_000)

    before = store_files()
    ref = big.remote()
    ember.get(ref)
    created = store_files() - before
    assert len(created) == 1
    del ref
    wait_freed(created, "the task result")


def test_nested_refs_keep_inner_objects_alive(cluster):
    inner = ember.put(np.arange(500_000))
    outer = ember.put({"inner": inner})
    del inner
    gc.collect()
    value = ember.get(outer)
    np.testing.assert_array_equal(ember.get(value["inner"]), np.arange(500_000))


def test_put_value_is_a_snapshot(cluster):
    array = np.zeros(10)
    ref = ember.put(array)
    array[0] = 99
    assert ember.get(ref)[0] == 0


def test_spilling_and_restore():
    # A separate driver with a 64 MiB store: 5 objects of 20 MiB must spill and come back.
    result = run_driver(
        """
        import glob, numpy as np, ember
        ember.init(num_cpus=1, object_store_memory=64 * 2**20)
        refs = [ember.put(np.full(20 * 2**20 // 8, i, dtype=np.int64)) for i in range(5)]
        import os
        from ember import api
        spill_dir = api._context.address_info["session_dir"] + "/spill"
        spilled = sum(len(files) for _, _, files in os.walk(spill_dir))
        values = [int(ember.get(r)[0]) for r in refs]
        try:
            ember.put(np.zeros(100 * 2**20 // 8))
        except ember.exceptions.ObjectStoreFullError as error:
            full = str(error)
        print("spilled", spilled)
        print("values", values)
        print("full", "cannot fit" in full)
        ember.shutdown()
    """,
        timeout=120,
    )
    lines = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())
    assert int(lines["spilled"]) >= 2
    assert lines["values"] == "[0, 1, 2, 3, 4]"
    assert lines["full"] == "True"


def test_free_on_owner_and_lost_objects(cluster):
    @ember.remote
    def read(refs):
        return ember.get(refs[0])

    ref = ember.put(b"x" * 200_000)
    assert ember.get(read.remote([ref])) == b"x" * 200_000
    api.free([ref])
    with pytest.raises(ember.exceptions.ObjectLostError):
        ember.get(ref, timeout=10)


def test_refs_returned_from_tasks_inside_values(cluster):
    @ember.remote
    def make_many(n):
        return [ember.put(np.full(100_000, i)) for i in range(n)]

    refs = ember.get(make_many.remote(3))
    assert [int(ember.get(r)[0]) for r in refs] == [0, 1, 2]
    assert os.path.exists("/dev/shm")


def test_get_of_object_whose_owner_died_raises(cluster):
    # The inner object is owned by the worker that put it; that worker exits (max_calls=1).
    @ember.remote(max_calls=1)
    def owner_then_exit():
        return [ember.put(np.zeros(200_000)), os.getpid()]

    inner, pid = ember.get(owner_then_exit.remote())
    import psutil

    wait_for(lambda: not psutil.pid_exists(pid), message="the owning worker to exit")
    with pytest.raises(ember.exceptions.OwnerDiedError):
        ember.get(inner, timeout=30)


def test_refs_made_in_a_task_and_returned_inside_a_value_are_freed(cluster):
    # The inner object is owned by the worker; the caller borrows it for as long as it holds it.
    @ember.remote
    def make():
        return [ember.put(np.zeros(1_000_000))]

    before = store_files()
    outer = make.remote()
    inner = ember.get(outer)[0]
    assert ember.get(inner).shape == (1_000_000,)
    created = store_files() - before
    assert len(created) == 1
    del inner, outer
    wait_freed(created, "the worker-owned object")


def test_object_borrowed_by_a_dead_actor_is_freed(cluster):
    @ember.remote
    class Keeper:
        def keep(self, box):
            self.box = box

    keeper = Keeper.remote()
    before = store_files()
    ref = ember.put(np.zeros(1_000_000))
    created = store_files() - before
    ember.get(keeper.keep.remote([ref]))  # the actor registers as a borrower
    ember.kill(keeper)  # ... and dies without unregistering
    del ref
    wait_freed(created, "the object a dead borrower held")


def test_ref_returned_twice_to_the_same_caller_is_still_freed(cluster):
    @ember.remote
    class Maker:
        def make(self):
            self.ref = ember.put(np.zeros(1_000_000))
            return [self.ref]

        def again(self):
            return [self.ref]

        def drop(self):
            del self.ref

    maker = Maker.remote()
    before = store_files()
    first = ember.get(maker.make.remote())
    second = ember.get(maker.again.remote())  # the same ref again, while we still hold it
    created = store_files() - before
    ember.get(maker.drop.remote())
    del first, second
    wait_freed(created, "the twice-returned object")


def test_free_of_a_pending_object_answers_its_waiters(cluster):
    @ember.remote
    def slow():
        import time

        time.sleep(1)
        return 1

    ref = slow.remote()
    future = ref.future()
    api.free([ref])
    with pytest.raises(ember.exceptions.ObjectFreedError):
        future.result(timeout=20)


def test_writer_killed_between_reserve_and_seal_gives_its_space_back(tmp_path):
    # A separate driver with a 100 MiB store: the worker writing an 80 MiB result is SIGKILLed
    # mid-write; afterwards the whole store must be usable again.
    result = run_driver(
        f"""
        import os, signal, time, numpy as np, ember
        ember.init(num_cpus=1, object_store_memory=100 * 2**20)
        pid_file = {str(tmp_path / "pid")!r}

        @ember.remote(max_retries=0)
        def big():
            import ember.runtime.client.ownership as ownership
            write = ownership.write_object
            def slow_write(*args, **kwargs):  # widen the window between reserving and sealing
                with open(pid_file + ".tmp", "w") as f:  # renamed whole: never read half-written
                    f.write(str(os.getpid()))
                os.rename(pid_file + ".tmp", pid_file)
                time.sleep(30)
                return write(*args, **kwargs)
            ownership.write_object = slow_write
            return np.ones(80 * 2**20, dtype=np.uint8)

        ref = big.remote()
        while not os.path.exists(pid_file):
            time.sleep(0.01)
        os.kill(int(open(pid_file).read()), signal.SIGKILL)
        try:
            ember.get(ref)
        except ember.exceptions.WorkerCrashedError:
            print("crashed")
        print(int(ember.get(ember.put(np.ones(90 * 2**20, dtype=np.uint8)))[0]))
        ember.shutdown()
    """,
        timeout=120,
    )
    assert result.stdout.split() == ["crashed", "1"]


def test_retried_task_rewrites_a_return_an_earlier_attempt_stored(cluster, tmp_path):
    marker = str(tmp_path / "died")

    class DieOnce:  # the worker dies while packing the second return, after storing the first
        def __reduce__(self):
            if not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), 9)
            return (int, (7,))

    @ember.remote(num_returns=2, max_retries=3)
    def two():
        return np.ones(2**21, dtype=np.uint8), DieOnce()

    first, second = two.remote()
    assert int(ember.get(first).sum()) == 2**21 and ember.get(second) == 7
