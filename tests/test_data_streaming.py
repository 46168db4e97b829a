"""The streaming proof: a dataset several times larger than the object store flows through
map_batches into iter_batches, the store sampled the whole time, with nothing spilled; and a limit on
a huge dataset runs a handful of tasks.

Each case runs in its own driver with its own small cluster, so the store it samples holds nothing
but this execution's blocks.
"""

import json

import pytest
from conftest import run_driver

STREAM = """
import glob, json, os, threading
import numpy as np
import ember, ember.data as rd
from ember import api
from ember.util import state

STORE = 64 * 2**20
ember.init(num_cpus=2, object_store_memory=STORE)
rd.DataContext.get_current().enable_progress_bars = False
prefix = api._cluster_process.store_prefix
samples, stop = [], threading.Event()

def store_bytes():
    total = 0
    for path in glob.glob(f"/dev/shm/{prefix}-*"):
        if ".gone" in path:
            # Freed by the store, renamed for the node manager's I/O pool to unlink (store_io.discard):
            # no longer the store's. At load 11 that pool lagged enough for the files to sum to
            # 70 MB, more than the 64 MB store itself can hold.
            continue
        try:
            total += os.stat(path).st_size
        except FileNotFoundError:
            pass  # freed between the listing and the stat
    return total

def sample():
    while not stop.is_set():
        samples.append(store_bytes())
        stop.wait(0.002)

ROWS, BLOCKS, WIDTH = 5 * STORE // 1024 + 4096, 96, 128  # 1 KiB a row: 5x the store and a bit
ds = rd.range_tensor(ROWS, shape=(WIDTH,), override_num_blocks=BLOCKS).map_batches(lambda b: {"data": b["data"] * 2})
thread = threading.Thread(target=sample)
thread.start()
seen = total = 0
try:
    for batch in ds.iter_batches(batch_size=1000, prefetch_batches=PREFETCH):
        seen += len(batch["data"])
        total += int(batch["data"][:, 0].sum())
finally:
    stop.set()
    thread.join()
stats = ds._last_stats
node = state.list_nodes(detail=True)[0].object_store
print(json.dumps({
    "rows": ROWS, "seen": seen, "total": total, "store": STORE, "budget": stats.budget,
    "bytes_out": stats.ops[0].bytes_out, "blocks_out": stats.ops[0].blocks_out, "tasks": stats.ops[0].tasks,
    "block_bytes": stats.ops[0].bytes_out // stats.ops[0].blocks_out, "peak_accounted": stats.peak_bytes,
    "samples": len(samples), "peak_store": max(samples), "spilled": node.get("spilled"),
    "num_spilled": node.get("num_spilled"),
}))
ember.shutdown()
"""


@pytest.mark.parametrize("prefetch", [0, 1, 8])
def test_a_dataset_five_times_the_store_streams_within_budget_without_spilling(prefetch):
    # With prefetch the execution runs in a background thread and blocks wait fetched for the
    # consumer; they count against the same budget.
    code = STREAM.replace("PREFETCH", str(prefetch))
    out = json.loads(run_driver(code, timeout=180).stdout.strip().splitlines()[-1])
    rows = out["rows"]
    assert out["seen"] == rows and out["total"] == 2 * rows * (rows - 1) // 2  # every row, exactly once
    assert out["bytes_out"] >= 5 * out["store"]
    assert out["blocks_out"] == out["tasks"] == 96
    assert out["samples"] > 50, "the sampler must have watched the run"
    # The store never held more than the execution's budget (a quarter of the store), which counts
    # the blocks the consumer holds and the one it let go last (its release reaches the store
    # asynchronously); one block of slack covers a release slower than a whole block's consumption.
    # It never came near its capacity: nothing was spilled.
    assert out["peak_store"] <= out["budget"] + out["block_bytes"] * 1.1, out
    assert out["peak_accounted"] <= out["budget"]
    assert out["num_spilled"] == 0 and out["spilled"] == 0


LIMIT = """
import json
import ember, ember.data as rd

ember.init(num_cpus=2)
rd.DataContext.get_current().enable_progress_bars = False
# A map that may change the row count: the limit cannot move into the read, so it must stop the read
# itself once its 10 rows have come.
ds = rd.range(10**9, override_num_blocks=10**4).map_batches(lambda b: {"id": b["id"] + 1}).limit(10)
rows = [r["id"] for r in ds.take_all()]
read = ds._last_stats.ops[0]
pushed = rd.range(10**12).limit(10)
pushed_rows = pushed.take_all()
print(json.dumps({"rows": rows, "tasks": read.tasks, "blocks": read.blocks_out,
                  "pushed_rows": len(pushed_rows), "pushed_tasks": pushed._last_stats.ops[0].tasks,
                  "pushed_read_rows": pushed._last_stats.ops[0].rows_out}))
ember.shutdown()
"""


def test_limit_on_a_huge_dataset_runs_a_handful_of_tasks():
    out = json.loads(run_driver(LIMIT, timeout=120).stdout.strip().splitlines()[-1])
    assert out["rows"] == list(range(1, 11))
    # 10**4 blocks of 10**5 rows: the first block has the 10 rows; what else started was only what
    # the executor had in flight when they came: 2 tasks per CPU running, as many finished waiting
    # for the first (when it is the slow one).
    assert 1 <= out["tasks"] <= 8, out
    # Through no row-changing map, the limit reaches the read: one task reads just 10 rows.
    assert out["pushed_rows"] == 10 and out["pushed_tasks"] == 1 and out["pushed_read_rows"] == 10
