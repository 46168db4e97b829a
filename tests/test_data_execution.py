"""ember.data's streaming executor: fusion, backpressure, limits, actor pools, faults and cleanup."""

import _thread
import gc
import os
import signal
import threading
import time

import numpy as np
import pytest
from conftest import wait_for

import ember
import ember.data as rd
from ember.util import state


@pytest.fixture
def budget():
    """Set the execution's object-store budget for one test, then put the default back."""
    limits = rd.DataContext.get_current().execution_options.resource_limits
    saved = limits.object_store_memory

    def set_budget(n):
        limits.object_store_memory = n

    yield set_budget
    limits.object_store_memory = saved


def live_pool_actors() -> list:
    return [a for a in state.list_actors() if a.class_name == "PoolWorker" and a.state != "DEAD"]


def owned_objects() -> int:
    gc.collect()
    return len(state.list_objects())


def test_map_chain_fuses_into_one_task_per_block(cluster):
    ds = (
        rd.range(100, override_num_blocks=5)
        .map(lambda r: {"id": r["id"] + 1})
        .map_batches(lambda b: {"id": b["id"] * 2})
        .filter(lambda r: r["id"] % 4 == 0)
    )
    assert ds._plan_lines() == ["ReadRange->Map(<lambda>)->MapBatches(<lambda>)->Filter(<lambda>)"]
    assert [r["id"] for r in ds.iter_rows()] == [v for v in ((i + 1) * 2 for i in range(100)) if v % 4 == 0]
    assert len(ds._last_stats.ops) == 1
    assert ds._last_stats.ops[0].tasks == 5
    assert "5 tasks" in ds.stats()
    # A different resource shape starts a new operator: no fusion across it.
    split = rd.range(10).map(lambda r: r).map_batches(lambda b: b, num_cpus=0.5)
    assert len(split._plan_lines()) == 2


def test_backpressure_keeps_blocks_in_flight_within_budget(cluster, budget):
    rows_per_block, blocks = 8192, 48
    block_bytes = rows_per_block * 8
    budget(4 * block_bytes)
    ds = rd.range(rows_per_block * blocks, override_num_blocks=blocks).map_batches(lambda b: {"id": b["id"] * 3})
    total, seen = 0, 0
    for batch in ds.iter_batches(batch_size=1000):
        total += int(batch["id"].sum())
        seen += len(batch["id"])
        time.sleep(0.001)  # a consumer slower than the producers
    n = rows_per_block * blocks
    assert seen == n and total == 3 * n * (n - 1) // 2
    stats = ds._last_stats
    assert stats.budget == 4 * block_bytes
    assert stats.ops[0].blocks_out == blocks  # 12x the budget went through
    assert stats.peak_bytes <= stats.budget
    assert 1 <= stats.peak_blocks <= 4


def test_limit_on_a_huge_range_reads_only_the_first_block(cluster):
    ds = rd.range(10**9).limit(10)
    assert ds.take_all() == [{"id": i} for i in range(10)]
    read = ds._last_stats.op("ReadRange")
    assert read.tasks == 1 and read.rows_out == 10
    # through a map that keeps rows, the limit still reaches the read
    mapped = rd.range(10**9).map(lambda r: {"id": r["id"] * 2}).limit(3)
    assert mapped.take_all() == [{"id": 0}, {"id": 2}, {"id": 4}]
    assert mapped._last_stats.ops[0].tasks == 1 and "limit=3" in mapped._plan_lines()[1]
    assert rd.range(10**9).take(2) == [{"id": 0}, {"id": 1}]


def test_actor_pool_scales_between_min_and_max(cluster):
    class Slow:
        def __call__(self, batch):
            time.sleep(0.2)
            return {"id": batch["id"], "pid": np.full(len(batch["id"]), os.getpid())}

    ds = rd.range(120, override_num_blocks=24).map_batches(Slow, concurrency=(1, 3))
    out = ds.to_pandas()
    assert out["id"].tolist() == list(range(120))
    pool = ds._last_stats.op("MapBatches(Slow)")
    assert pool.min_actors == 1 and pool.max_actors == 3 and pool.actors_started == 3
    assert out["pid"].nunique() == 3
    assert pool.actors_killed_idle == 3  # each left as soon as no more work could come
    wait_for(lambda: not live_pool_actors(), message="the pool's actors to be gone")

    fixed = rd.range(20, override_num_blocks=4).map_batches(Slow, compute=rd.ActorPoolStrategy(min_size=2, max_size=2))
    assert fixed.count() == 20 and fixed._last_stats.op("Slow").max_actors == 2


def test_sigkilled_worker_task_is_retried_and_result_exact(cluster, tmp_path):
    marker = str(tmp_path / "killed-once")

    def die_once(batch):
        if batch["id"][0] == 50 and not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return {"id": batch["id"] + 1}

    ds = rd.range(100, override_num_blocks=4).map_batches(die_once)
    assert ds.to_pandas()["id"].tolist() == list(range(1, 101))
    assert os.path.exists(marker)
    assert ds._last_stats.ops[0].tasks == 4


class Broken(Exception):
    pass


def test_user_error_has_the_users_type_and_names_the_operator(cluster):
    before = owned_objects()

    def fails(batch):
        if batch["id"][0] >= 30:
            raise Broken("bad block")
        return batch

    with pytest.raises(Broken, match="bad block") as info:
        rd.range(60, override_num_blocks=6).map_batches(fails).take_all()
    assert "ReadRange->MapBatches(fails)" in str(info.value)

    class FailsInPool:
        def __call__(self, batch):
            raise KeyError("pool")

    with pytest.raises(KeyError) as info:
        rd.range(10, override_num_blocks=2).map_batches(FailsInPool, concurrency=2).count()
    assert "MapBatches(FailsInPool)" in str(info.value)

    class BadInit:
        def __init__(self):
            raise ZeroDivisionError("ctor")

        def __call__(self, batch):
            return batch

    with pytest.raises(ZeroDivisionError):
        rd.range(10).map_batches(BadInit, concurrency=1).take_all()
    # A caught exception holds the frames it passed through, and their block refs with them, for as
    # long as it lives (as any Python exception does): let it go before counting.
    info = None
    gc.collect()
    wait_for(lambda: not live_pool_actors(), message="the failed pools' actors to be gone")
    wait_for(lambda: owned_objects() <= before, message="the blocks of the failed runs to be freed")


def test_keyboard_interrupt_in_the_consumer_stops_everything(cluster):
    before = owned_objects()

    class Sleepy:
        def __call__(self, batch):
            time.sleep(0.3)
            return batch

    ds = rd.range(400, override_num_blocks=40).map_batches(Sleepy, concurrency=(1, 2))
    timer = threading.Timer(1.0, _thread.interrupt_main)
    timer.start()
    seen = 0
    with pytest.raises(KeyboardInterrupt):
        for batch in ds.iter_batches(batch_size=10):
            seen += len(batch["id"])
    timer.cancel()
    assert seen < 400
    wait_for(lambda: not live_pool_actors(), message="the pool's actors to be killed")
    wait_for(lambda: owned_objects() <= before, message="the execution's blocks to be freed")
    # the cluster is still fine for the next execution
    assert rd.range(10).count() == 10 and rd.range(5).map(lambda r: r).take(1) == [{"id": 0}]


def test_breaking_out_of_iteration_cancels_the_rest(cluster):
    before = owned_objects()
    it = rd.range(10_000, override_num_blocks=50).map_batches(lambda b: b).iter_batches(batch_size=100)
    first = next(it)
    assert list(first["id"]) == list(range(100))
    it.close()
    wait_for(lambda: owned_objects() <= before, message="the blocks to be freed")


def test_a_pool_that_would_take_every_cpu_from_its_inputs_is_refused_at_once(cluster):
    class Add:
        def __call__(self, batch):
            return {"id": batch["id"] + 1}

    cpus = int(ember.cluster_resources()["CPU"])
    # A map with resources of its own stays a task operator before the pool: it needs CPUs.
    feeder = rd.range(100, override_num_blocks=4).map_batches(lambda b: b, num_cpus=1)
    with pytest.raises(ValueError, match="nothing could feed the pool"):
        feeder.map_batches(Add, concurrency=cpus).count()
    # Fewer CPUs per actor leaves room for the tasks.
    assert feeder.map_batches(Add, concurrency=cpus, num_cpus=0.5).count() == 100
    # A read (and plain maps) fuse into the pool, as in Ray: its actors read their own blocks.
    fused = rd.range(100, override_num_blocks=4).map_batches(lambda b: b).map_batches(Add, concurrency=cpus)
    assert fused._plan_lines() == [f"ReadRange->MapBatches(<lambda>)->MapBatches(Add) [actors {cpus}..{cpus}]"]
    assert sorted(r["id"] for r in fused.take_all()) == list(range(1, 101))
    assert fused._last_stats.ops[0].tasks == 4
    wait_for(lambda: not live_pool_actors(), message="no pool actor left")


def test_write_min_rows_per_file_gathers_consecutive_blocks(cluster, tmp_path):
    import pyarrow.parquet as pq

    ds = rd.range(1000, override_num_blocks=10).map_batches(lambda b: {"id": b["id"], "sq": b["id"] ** 2})
    ds.write_parquet(str(tmp_path / "grouped"), min_rows_per_file=250)
    files = sorted((tmp_path / "grouped").iterdir())
    rows = [pq.ParquetFile(f).metadata.num_rows for f in files]
    # Blocks of 100 rows, gathered in order until 250: files of 300, the rest in the last one.
    assert rows == [300, 300, 300, 100]
    assert all(pq.ParquetFile(f).num_row_groups == 1 for f in files)  # one row group a file
    back = rd.read_parquet(str(tmp_path / "grouped")).to_pandas()
    assert back["id"].tolist() == list(range(1000)) and (back["sq"] == back["id"] ** 2).all()
    # Ray's older name still works, with a warning.
    with pytest.warns(DeprecationWarning, match="min_rows_per_file"):
        ds.write_parquet(str(tmp_path / "older"), num_rows_per_file=250)
    assert len(list((tmp_path / "older").iterdir())) == 4
    # Ray's task options for the writes: a write with its own resources runs as an operator of its own.
    ds.write_parquet(str(tmp_path / "shaped"), ray_remote_args={"num_cpus": 0.5}, concurrency=1)
    assert rd.read_parquet(str(tmp_path / "shaped")).to_pandas()["id"].tolist() == list(range(1000))
    assert "WriteParquet" in ds._last_stats.summary() and "->WriteParquet" not in ds._last_stats.summary()
    with pytest.raises(ValueError, match="concurrency"):
        ds.write_parquet(str(tmp_path / "refused"), concurrency=0)
    with pytest.raises(ValueError):
        ds.write_parquet(str(tmp_path / "refused"), ray_remote_args={"num_cpus": -1})
    assert not (tmp_path / "refused").exists()
    # A block at least that large stays one file of its own.
    rd.range(1000, override_num_blocks=2).write_csv(str(tmp_path / "csv"), min_rows_per_file=100)
    assert len(list((tmp_path / "csv").iterdir())) == 2


def test_write_min_rows_per_file_larger_than_the_budget_still_finishes(cluster, tmp_path, budget):
    import pyarrow.parquet as pq

    # Blocks of 80 KB against a budget of 400 KB: the 2,000,000 rows asked for never fit at once, so
    # files go out with what the budget let gather instead of waiting for room nothing would free.
    budget(400_000)
    rd.range(100_000, override_num_blocks=10).write_parquet(str(tmp_path / "out"), min_rows_per_file=2_000_000)
    files = sorted((tmp_path / "out").iterdir())
    assert 1 < len(files) <= 10
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in files) == 100_000
    budget(None)  # the sort below gathers everything
    assert rd.read_parquet(str(tmp_path / "out")).sort("id").to_pandas()["id"].tolist() == list(range(100_000))
