"""Multi-node behaviour: one head and several node managers on this machine, as real processes.

The drivers run as subprocesses (``run_driver``) connected by address, and print what the test
checks as JSON on their last line.
"""

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest
from conftest import run_driver, wait_for
from multinode import LocalCluster


@pytest.fixture(scope="module")
def three_nodes():
    """head: 2 CPUs; node_a: 2 CPUs + {"node_a": 1}; node_b: 2 CPUs, 2 GPUs + {"node_b": 1}."""
    cluster = LocalCluster({"CPU": 2.0}, shared=True)
    try:
        cluster.add_node({"CPU": 2.0, "node_a": 1.0})
        cluster.add_node({"CPU": 2.0, "GPU": 2.0, "node_b": 1.0})
        yield cluster
    finally:
        cluster.stop()


PRELUDE = """
import json, os, time
import numpy as np
import ember
from ember.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ember.init(address={address!r})

def wait_nodes(n):
    deadline = time.monotonic() + 30
    while sum(1 for node in ember.nodes() if node["Alive"]) < n:
        if time.monotonic() > deadline:
            raise RuntimeError("nodes did not join")
        time.sleep(0.05)

@ember.remote
def where(delay=0.0):
    time.sleep(delay)
    return ember.get_runtime_context().get_node_id()
"""


def driver(cluster: LocalCluster, body: str, timeout: float = 90, env=None) -> dict:
    code = PRELUDE.format(address=cluster.address) + body
    result = run_driver(code, timeout=timeout, env={"EMBER_CLUSTER_TOKEN": cluster.token, **(env or {})})
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_strategies_place_work_where_they_must(three_nodes):
    head, node_a, node_b = (n["node_id"] for n in three_nodes.nodes)
    out = driver(
        three_nodes,
        """
wait_nodes(3)
out = {}
out["custom_a"] = ember.get(where.options(resources={"node_a": 1}).remote())
out["custom_b"] = ember.get(where.options(resources={"node_b": 0.5}).remote())
out["gpu"] = ember.get(where.options(num_gpus=1).remote())
out["local"] = ember.get(where.remote())
out["spread"] = sorted(set(ember.get([where.options(scheduling_strategy="SPREAD").remote(0.3) for _ in range(6)])))
# The default policy packs the local node until half of it is busy, then spreads.
out["hybrid"] = sorted(set(ember.get([where.remote(0.5) for _ in range(6)])))
affinity = NodeAffinitySchedulingStrategy({node_a!r}, soft=False)
out["affinity"] = ember.get([where.options(scheduling_strategy=affinity).remote() for _ in range(3)])
out["affinity_busy"] = ember.get(where.options(num_cpus=2, scheduling_strategy=affinity).remote())
bogus = NodeAffinitySchedulingStrategy("ab" * 16, soft=False)
try:
    ember.get(where.options(scheduling_strategy=bogus).remote())
except ember.exceptions.TaskUnschedulableError as error:
    out["hard_error"] = str(error)
soft = NodeAffinitySchedulingStrategy("ab" * 16, soft=True)
out["soft"] = ember.get(where.options(scheduling_strategy=soft).remote())
print(json.dumps(out))
""".replace("{node_a!r}", repr(node_a)),
    )
    assert out["custom_a"] == node_a and out["custom_b"] == node_b and out["gpu"] == node_b
    assert out["local"] == head
    assert out["spread"] == sorted([head, node_a, node_b])
    assert len(out["hybrid"]) >= 2
    assert out["affinity"] == [node_a] * 3 and out["affinity_busy"] == node_a
    assert "ab" * 16 in out["hard_error"] and "soft=True" in out["hard_error"]
    assert out["soft"] in (head, node_a, node_b)


def test_gpus_across_nodes(three_nodes):
    out = driver(
        three_nodes,
        """
@ember.remote(num_gpus=0.5)
def half():
    time.sleep(0.5)
    return ember.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"]

@ember.remote(num_gpus=1)
class Holder:
    def ids(self):
        return ember.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"], ember.get_runtime_context().get_node_id()

holder = Holder.remote()
out = {"actor": ember.get(holder.ids.remote())}
refs = [half.remote() for _ in range(2)]
time.sleep(0.2)
table = []
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    table = [row for node in ember.nodes() for row in node["GPUs"]]
    if len(table) >= 3:
        break
    time.sleep(0.05)
out["halves"] = ember.get(refs)
out["table"] = table
print(json.dumps(out))
""",
    )
    node_b = three_nodes.nodes[2]["node_id"]
    ids, visible, node = out["actor"]
    assert node == node_b and len(ids) == 1 and visible == str(ids[0])
    # Fractions pack onto one device: the one the actor does not hold.
    assert [h[0] for h in out["halves"]] == [[1 - ids[0]]] * 2
    holders = sorted((row["gpu_id"], row["share"], "Holder" in row["holder"]) for row in out["table"])
    assert holders == sorted([(ids[0], 1.0, True), (1 - ids[0], 0.5, False), (1 - ids[0], 0.5, False)])


def test_objects_move_between_nodes(three_nodes):
    out = driver(
        three_nodes,
        """
@ember.remote(resources={"node_a": 0.1})
def make(n):
    return np.arange(n, dtype=np.float64)

@ember.remote(resources={"node_b": 0.1})
def total(array):
    return float(array.sum()), ember.get_runtime_context().get_node_id()

@ember.remote
def consume(array):
    return ember.get_runtime_context().get_node_id()

n = 8_000_000  # 64 MB: several chunks
ref = make.remote(n)
value = ember.get(ref)
out = {"driver_sum": float(value.sum()), "expected": float(np.arange(n, dtype=np.float64).sum())}
out["remote_sum"], out["remote_node"] = ember.get(total.remote(ref))
# Data locality: a task whose large argument lives on node_a asks node_a first.
out["locality"] = ember.get(consume.remote(ref))
driver_put = ember.put(np.ones(4_000_000))
out["put_sum"], _ = ember.get(total.remote(driver_put))
oid = ref.hex()
del value, ref, driver_put
deadline = time.monotonic() + 10
import glob
while glob.glob(f"/dev/shm/ember-*-{oid}") and time.monotonic() < deadline:
    time.sleep(0.05)
out["copies_left"] = glob.glob(f"/dev/shm/ember-*-{oid}")
print(json.dumps(out))
""",
    )
    node_a, node_b = three_nodes.nodes[1]["node_id"], three_nodes.nodes[2]["node_id"]
    assert out["driver_sum"] == out["expected"] and out["remote_sum"] == out["expected"]
    assert out["remote_node"] == node_b
    assert out["locality"] == node_a
    assert out["put_sum"] == 4_000_000
    assert out["copies_left"] == []  # the original and both copies were freed with the ref


def test_node_death_retries_tasks_restarts_actors_rebuilds_objects():
    cluster = LocalCluster({"CPU": 2.0})
    try:
        doomed = cluster.add_node({"CPU": 2.0, "doomed": 1.0})
        cluster.add_node({"CPU": 2.0})
        body = """
wait_nodes(3)
doomed = {doomed!r}
soft = NodeAffinitySchedulingStrategy(doomed, soft=True)

@ember.remote(max_restarts=1, max_task_retries=-1, scheduling_strategy=soft)
class Counter:
    def __init__(self):
        self.n = 0
    def node(self):
        return ember.get_runtime_context().get_node_id()
    def big(self):
        return np.zeros(1_000_000)

@ember.remote(scheduling_strategy=soft)
def big_array():
    return np.full(2_000_000, 7.0)

@ember.remote(scheduling_strategy=NodeAffinitySchedulingStrategy(doomed, soft=False))
def owned_there():
    return [ember.put(np.ones(1_000_000))]  # owned by a worker of the doomed node

counter = Counter.remote()
out = {{"actor_before": ember.get(counter.node.remote())}}
orphan = ember.get(owned_there.remote())[0]
lost = counter.big.remote()
kept = big_array.remote()
ember.wait([lost, kept], num_returns=2)
# Work in flight on the node when it dies: sleeping tasks spread over every node.
slow = [where.options(scheduling_strategy="SPREAD").remote(2.0) for _ in range(6)]
time.sleep(0.5)
print("KILL", flush=True)
while not os.path.exists({flag!r}):
    time.sleep(0.02)
out["slow"] = ember.get(slow, timeout=60)
out["kept"] = float(ember.get(kept, timeout=60).sum())
try:
    ember.get(lost, timeout=60)
except ember.exceptions.ObjectLostError as error:
    out["lost"] = str(error)
out["actor_after"] = ember.get(counter.node.remote(), timeout=60)
try:
    ember.get(orphan, timeout=60)
except ember.exceptions.OwnerDiedError as error:
    out["orphan"] = str(error)
out["alive"] = sorted(n["NodeID"] for n in ember.nodes() if n["Alive"])
print(json.dumps(out))
"""
        flag = tempfile.mktemp(prefix="ember-killed-")
        code = PRELUDE.format(address=cluster.address) + body.format(doomed=doomed["node_id"], flag=flag)
        process = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, EMBER_CLUSTER_TOKEN=cluster.token),
        )
        assert process.stdout.readline().strip() == "KILL"
        cluster.kill_node(doomed)
        open(flag, "w").close()
        stdout, stderr = process.communicate(timeout=120)
        os.unlink(flag)
        assert process.returncode == 0, stderr
        out = json.loads(stdout.strip().splitlines()[-1])
    finally:
        cluster.stop()
    survivors = sorted(n["node_id"] for n in cluster.nodes if n is not doomed)
    assert out["actor_before"] == doomed["node_id"]
    assert out["actor_after"] in survivors  # restarted elsewhere (max_restarts=1)
    assert len(out["slow"]) == 6 and set(out["slow"]) <= set(survivors)  # retried where they could run
    assert out["kept"] == 14_000_000.0  # rebuilt from lineage
    assert "died" in out["lost"] and "cannot be rebuilt" in out["lost"]  # an actor call's result
    assert out["alive"] == survivors
    assert "died" in out["orphan"]  # its owner died with the node: an error, not a hang


def test_a_cluster_with_a_chosen_secret_refuses_strangers(monkeypatch):
    import zmq

    from ember.runtime import protocol, transport

    # Curve over TCP for every connection, as between machines (no node-local ipc:// shortcut).
    monkeypatch.setenv("EMBER_LOCAL_IPC", "0")
    cluster = LocalCluster({"CPU": 1.0}, token="s3cret")
    try:
        cluster.add_node({"CPU": 1.0, "node_a": 1.0})
        out = driver(
            cluster,
            """
wait_nodes(2)
print(json.dumps({"node": ember.get(where.options(resources={"node_a": 1}).remote()),
                  "value": float(ember.get(ember.put(np.ones(1_000_000))).sum())}))
""",
        )
        assert out == {"node": cluster.nodes[1]["node_id"], "value": 1_000_000.0}
        # With a wrong secret the head refuses the handshake: no reply, and connect_checked says why.
        sock = transport.connect_dealer(cluster.address, token="guess")
        sock.send_multipart(protocol.encode({"op": protocol.GET_NODES, "rid": b"1"}))
        assert sock.poll(1000, zmq.POLLIN) == 0
        sock.close(0)
        with pytest.raises(transport.AuthenticationError):
            transport.connect_checked(cluster.address, token="guess")
    finally:
        cluster.stop()


def test_no_process_listens_without_a_secret(monkeypatch):
    from ember.runtime import transport

    monkeypatch.delenv("EMBER_CLUSTER_TOKEN", raising=False)
    with pytest.raises(transport.MissingSecretError, match="EMBER_CLUSTER_TOKEN"):
        transport.bind_router("127.0.0.1")


@pytest.mark.parametrize("end", ["stop_node", "kill_node"])
def test_a_node_that_stops_or_is_killed_is_dead_before_its_heartbeats_time_out(end):
    # A clean stop says so; a SIGKILL drops the connection. Neither waits out the heartbeat timeout.
    cluster = LocalCluster({"CPU": 1.0}, node_timeout_s=300)  # far longer than this test may wait
    try:
        leaving = cluster.add_node({"CPU": 1.0})
        wait_for(lambda: len(cluster.node_table()) == 2, message="the node to join")
        getattr(cluster, end)(leaving)
        wait_for(
            lambda: [n["alive"] for n in cluster.node_table()] == [True, False],
            message=f"the head to mark the node dead after {end}",
        )
    finally:
        cluster.stop()


def test_remote_cells_on_every_node_of_a_cluster(tmp_path):
    """The notebook's %%remote --all-nodes and --node, against a cluster of three node managers."""
    pytest.importorskip("ipykernel")
    from kernel_session import KernelSession

    cluster = LocalCluster({"CPU": 1.0})
    kernel = None
    try:
        for name in ("a", "b"):
            cluster.add_node({"CPU": 1.0, name: 1.0})
        wait_for(lambda: len(cluster.node_table()) == 3, message="the nodes to join")
        kernel = KernelSession(
            cwd=str(tmp_path), env={"EMBER_ADDRESS": cluster.address, "EMBER_CLUSTER_TOKEN": cluster.token}
        )
        kernel.execute("%load_ext ember")
        every = kernel.execute(
            "%%remote --all-nodes\nimport ember\nprint('on', ember.get_runtime_context().get_node_id())\n1"
        )
        node_b = cluster.nodes[2]["node_id"]
        pinned = kernel.execute(f"%%remote --node {node_b}\nimport ember\nember.get_runtime_context().get_node_id()")
        text = every.stdout()
        for index, node in enumerate(cluster.nodes):
            # One block per node, headed by the node, holding that node's own line.
            assert f"[stdout:node{index} {node['node_id'][:8]}]\non {node['node_id']}\n" in text, text
        assert pinned.result()["text/plain"] == repr(node_b)
        kernel.execute("%unload_ext ember")
    finally:
        if kernel is not None:
            kernel.shutdown()
        cluster.stop()
