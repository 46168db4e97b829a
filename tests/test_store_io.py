"""Store I/O under load: spilling gigabytes off the node manager's loop, readers' pins, and pulls
whose holder dies mid-transfer. Real processes, real files in /dev/shm and on disk."""

import glob
import json
import os
import subprocess
import sys
import textwrap

from conftest import run_driver, wait_for
from multinode import LocalCluster
from test_cluster import PRELUDE, driver

GiB = 2**30
MiB = 2**20


def test_spilling_gigabytes_keeps_the_node_alive_and_the_values_right():
    # 4 GiB through a 512 MiB store on a node of its own (not the head's, whose loop it shares): 28 of
    # the 32 arrays go to disk and come back. The copies used to run on the node manager's loop,
    # which then missed heartbeats for over a second at a time; a 1 s timeout declared it dead.
    # (/tmp has room: the spill files take at most 4 GiB.)
    cluster = LocalCluster({"CPU": 1.0}, node_timeout_s=1.0)
    try:
        cluster.add_node({"CPU": 1.0, "spiller": 1.0})
        out = driver(
            cluster,
            """
import threading
deaths = []
spilled = [0]
stop = threading.Event()
def watch():
    while not stop.is_set():
        for node in ember.nodes():
            if not node["Alive"]:
                deaths.append(node["NodeID"])
            spilled[0] = max(spilled[0], node["ObjectStore"].get("spilled", 0))
        time.sleep(0.05)

@ember.remote(resources={"spiller": 1.0}, max_retries=0)
def spill_and_read():
    refs = [ember.put(np.full(16 * 2**20, float(i))) for i in range(32)]  # 128 MiB each
    wrong = []
    for i, ref in enumerate(refs):
        value = ember.get(ref)
        if not (value[0] == value[-1] == value[len(value) // 2] == i):
            wrong.append(i)
        del value
    return wrong

watcher = threading.Thread(target=watch)
watcher.start()
wait_nodes(2)
try:
    wrong = ember.get(spill_and_read.remote())
finally:
    stop.set()
    watcher.join()
print(json.dumps({"deaths": deaths, "wrong": wrong, "spilled": spilled[0]}))
""",
            timeout=300,
        )
        table = cluster.node_table()
    finally:
        cluster.stop()
    assert out["deaths"] == [] and out["wrong"] == []
    assert [node["alive"] for node in table] == [True, True]
    assert out["spilled"] >= 3 * GiB  # it did spill: at the end of the puts, 28 arrays were on disk


def test_a_mapped_object_is_not_spilled_until_its_reader_lets_go():
    result = run_driver(
        """
import gc, json, os
import numpy as np
import ember
from ember.runtime.client.core_client import current_client
from ember.runtime.node.object_store import object_path
from ember.runtime.client.ownership import store_prefix
ember.init(num_cpus=1, object_store_memory=512 * 2**20)
client = current_client()
path = lambda ref: object_path(store_prefix(client.node_id), ref._id)
first = ember.put(np.full(25 * 2**20, 1.0))  # 200 MiB
mapped = ember.get(first)  # a read-only view on the object's shared memory
others = [ember.put(np.full(25 * 2**20, float(i))) for i in range(2, 6)]  # 800 MiB more: spills
out = {"pinned_kept": os.path.exists(path(first)), "mapped_ok": bool((mapped == 1.0).all())}
del mapped
gc.collect()
more = [ember.put(np.full(25 * 2**20, float(i))) for i in range(6, 8)]
out["spilled_after"] = not os.path.exists(path(first))
out["values"] = [float(ember.get(ref)[-1]) for ref in [first, *others, *more]]
print(json.dumps(out))
ember.shutdown()
""",
        timeout=180,
    )
    out = json.loads(result.stdout.strip().splitlines()[-1])
    # While mapped, the least recently used object stayed in memory (others spilled in its place);
    # once let go it was spilled like any other, and everything reads back right.
    assert out == {"pinned_kept": True, "mapped_ok": True, "spilled_after": True, "values": [1.0, *range(2, 8)]}


KILL_MID_PULL = """
doomed = {doomed!r}
@ember.remote(scheduling_strategy=NodeAffinitySchedulingStrategy(doomed, soft=True), max_retries={retries})
def big():
    return np.full(62_500_000, 7.0)  # 500 MB, stored on the doomed node
wait_nodes(2)
ref = big.remote()
ember.wait([ref])
print("PULL", ref.hex(), flush=True)
started = time.monotonic()
try:
    value = ember.get(ref, timeout=120)
    out = {{"value": [float(value[0]), float(value[-1]), len(value)]}}
except ember.exceptions.ObjectLostError as error:
    out = {{"lost": str(error)}}
print(json.dumps(out))
"""


def kill_mid_pull(cluster: LocalCluster, retries: int) -> tuple[dict, bool]:
    """Run a driver on the head's node that reads a 500 MB task result held by a new node, and
    SIGKILL that node while the copy arrives. Returns what the driver's first get gave, and
    whether the kill came mid-transfer."""
    doomed = cluster.add_node({"CPU": 1.0})
    reader_prefix = cluster.nodes[0]["store_prefix"]
    code = PRELUDE.format(address=cluster.address) + KILL_MID_PULL.format(doomed=doomed["node_id"], retries=retries)
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, EMBER_CLUSTER_TOKEN=cluster.token),
    )
    try:
        line = process.stdout.readline().split()
        assert line[:1] == ["PULL"], process.stderr.read()
        partial = f"/dev/shm/{reader_prefix}-{line[1]}.part"  # the copy being received
        mid_pull = bool(wait_for(lambda: os.path.exists(partial), timeout=60, interval=0.002, message="the pull"))
        cluster.kill_node(doomed)
        stdout, stderr = process.communicate(timeout=180)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    # Whoever saw the node die removed its store files; nobody waited for `ember stop`.
    wait_for(lambda: not glob.glob(f"/dev/shm/{doomed['store_prefix']}-*"), message="the dead node's files to go")
    return json.loads(stdout.strip().splitlines()[-1]), mid_pull


def test_a_pull_whose_holder_dies_returns_the_rebuilt_value_on_the_first_get():
    cluster = LocalCluster({"CPU": 1.0})
    try:
        for _ in range(3):
            out, mid_pull = kill_mid_pull(cluster, retries=3)
            assert mid_pull
            assert out == {"value": [7.0, 7.0, 62_500_000]}  # rebuilt from lineage on the head's node
    finally:
        cluster.stop()


def test_a_pull_whose_holder_dies_fails_when_the_object_cannot_be_rebuilt():
    # A task with no retries left, like a put() or an actor call's result, has no lineage to rerun.
    # (A put() from this driver lands in its own node's store, so that node cannot die mid-pull.)
    cluster = LocalCluster({"CPU": 1.0})
    try:
        out, _ = kill_mid_pull(cluster, retries=0)
    finally:
        cluster.stop()
    assert "died" in out["lost"] and "cannot be rebuilt" in out["lost"]
