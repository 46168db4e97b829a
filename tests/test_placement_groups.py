"""Placement groups end to end: on the shared one-node cluster, and across several node managers
started as real processes against one head."""

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile

import pytest
from conftest import run_driver, wait_for

import ember
from ember.runtime import protocol
from ember.runtime.client.core_client import current_client
from ember.util import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from ember.util.placement_group import PlacementGroupID
from ember.util.scheduling_strategies import PlacementGroupSchedulingStrategy


def group_resources(pg) -> dict:
    return {name: amount for name, amount in ember.available_resources().items() if pg.id.hex() in name}


@pytest.fixture
def groups(cluster):
    """Groups made by a test, removed after it whatever happens, so later tests find the node whole."""
    made = []
    yield made
    for pg in made:
        try:
            remove_placement_group(pg)
        except Exception:
            pass
    wait_for(
        lambda: (
            ember.available_resources().get("CPU") == 4 and not any("_group_" in k for k in ember.available_resources())
        ),
        message="every bundle to be given back",
    )


def test_create_ready_wait_and_table(groups):
    pg = placement_group([{"CPU": 1, "custom": 1}, {"CPU": 1, "GPU": 1}], strategy="PACK")
    groups.append(pg)
    assert isinstance(pg, PlacementGroup) and pg.bundle_count == 2
    assert pg.bundle_specs == [{"CPU": 1, "custom": 1}, {"CPU": 1, "GPU": 1}]
    assert ember.get(pg.ready(), timeout=10) == pg
    assert pg.wait(timeout_seconds=5)
    entry = placement_group_table(pg)
    node_id = ember.nodes()[0]["NodeID"]
    assert entry["placement_group_id"] == pg.id.hex()
    assert entry["state"] == "CREATED" and entry["strategy"] == "PACK"
    assert entry["bundles"] == {0: {"CPU": 1.0, "custom": 1.0}, 1: {"CPU": 1.0, "GPU": 1.0}}
    assert entry["bundles_to_node_id"] == {0: node_id, 1: node_id}
    assert entry["stats"]["scheduling_state"] == "FINISHED"
    assert pg.id.hex() in placement_group_table()


def test_bundle_resources_appear_on_the_node_and_go_on_removal(groups):
    pg = placement_group([{"CPU": 1}, {"CPU": 1, "custom": 2}], strategy="STRICT_PACK")
    groups.append(pg)
    assert pg.wait(10)
    group = pg.id.hex()
    expected = {
        f"CPU_group_0_{group}": 1,
        f"CPU_group_1_{group}": 1,
        f"CPU_group_{group}": 2,
        f"custom_group_1_{group}": 2,
        f"custom_group_{group}": 2,
        f"bundle_group_0_{group}": 1000,
        f"bundle_group_1_{group}": 1000,
        f"bundle_group_{group}": 2000,
    }
    wait_for(lambda: group_resources(pg) == expected, message="the bundles' resources on the node")
    available = ember.available_resources()
    assert available["CPU"] == 2 and available["custom"] == 2
    assert ember.cluster_resources()[f"CPU_group_{group}"] == 2
    remove_placement_group(pg)
    wait_for(
        lambda: not group_resources(pg) and ember.available_resources().get("CPU") == 4,
        message="the bundles' resources to be given back",
    )
    assert ember.available_resources()["custom"] == 4
    assert placement_group_table(pg)["state"] == "REMOVED"
    remove_placement_group(pg)  # removing twice is harmless, as in Ray


def test_tasks_and_actors_run_in_their_bundle(groups):
    pg = placement_group([{"CPU": 1, "custom": 1}, {"CPU": 1}])
    groups.append(pg)
    assert pg.wait(10)

    @ember.remote(num_cpus=1, resources={"custom": 1})
    def where(group):
        # A PlacementGroup travels in arguments; the task sees which group it runs in.
        current = get_current_placement_group()
        return group.id.hex(), current.id.hex() if current is not None else None

    strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
    group_hex, current = ember.get(where.options(scheduling_strategy=strategy).remote(pg), timeout=20)
    assert group_hex == pg.id.hex()
    assert current == pg.id.hex(), "get_current_placement_group() inside a task of the group"

    @ember.remote(num_cpus=1)
    class Holder:
        def ping(self):
            return "pong"

    holder = Holder.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 1)).remote()
    assert ember.get(holder.ping.remote(), timeout=20) == "pong"
    # Its bundle is in use (available_resources() leaves out what is down to zero).
    held = f"CPU_group_1_{pg.id.hex()}"
    wait_for(lambda: held not in group_resources(pg), message="bundle 1 to be held")

    remove_placement_group(pg)  # as in Ray, what runs in a removed group is killed (soon after)

    def holder_died():
        try:
            ember.get(holder.ping.remote(), timeout=20)
        except ember.exceptions.ActorDiedError:
            return True
        return False

    wait_for(holder_died, message="the actor of the removed group to die")
    # Work that needs a removed group's bundles fails instead of waiting forever.
    with pytest.raises(ember.exceptions.TaskUnschedulableError, match="was removed"):
        ember.get(where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg)).remote(pg), timeout=20)


def test_infeasible_group_is_reported_and_stays_pending(groups, capsys):
    pg = placement_group([{"CPU": 100}])
    groups.append(pg)
    assert "cannot be placed" in capsys.readouterr().err
    assert not pg.wait(timeout_seconds=0.5)
    entry = placement_group_table(pg)
    assert entry["state"] == "PENDING" and entry["stats"]["scheduling_state"] == "INFEASIBLE"
    reply, _ = current_client().request("head", {"op": protocol.GET_NODES})
    assert {"CPU": 100.0} in reply.pending_bundles
    ready = pg.ready()
    remove_placement_group(pg)
    with pytest.raises(RuntimeError, match="removed"):
        ember.get(ready, timeout=10)


def test_group_waits_for_room_then_is_created(groups):
    first = placement_group([{"CPU": 3}])
    groups.append(first)
    assert first.wait(10)
    second = placement_group([{"CPU": 2}])
    groups.append(second)
    assert not second.wait(0.5)
    assert placement_group_table(second)["stats"]["scheduling_state"] == "QUEUED"
    remove_placement_group(first)
    assert second.wait(10)


def test_named_groups(groups):
    pg = placement_group([{"CPU": 1}], name="trainers")
    groups.append(pg)
    assert get_placement_group("trainers") == pg
    assert get_placement_group("trainers").bundle_specs == [{"CPU": 1.0}]
    with pytest.raises(ValueError, match="already exists"):
        placement_group([{"CPU": 1}], name="trainers")
    remove_placement_group(pg)
    with pytest.raises(ValueError, match="trainers"):
        get_placement_group("trainers")


def test_bad_arguments_fail_at_the_call(cluster):
    for bundles in ([], [{}], [{"CPU": -1}], [{"CPU": 0}], {"CPU": 1}):
        with pytest.raises(ValueError):
            placement_group(bundles)
    with pytest.raises(ValueError, match="strategy"):
        placement_group([{"CPU": 1}], strategy="CLOSE")
    with pytest.raises(ValueError, match="lifetime"):
        placement_group([{"CPU": 1}], lifetime="forever")
    pg = PlacementGroup.empty()
    with pytest.raises(ValueError):
        PlacementGroupSchedulingStrategy(pg, -2)
    assert get_current_placement_group() is None  # a driver is in no group


def test_groups_of_a_finished_job_are_removed_detached_ones_kept(groups, cluster):
    run_driver(
        f"""
        import ember
        from ember.util import placement_group
        ember.init(address={cluster.address!r})
        assert placement_group([{{"CPU": 1}}], name="job_scoped").wait(10)
        assert placement_group([{{"CPU": 1}}], name="detached_one", lifetime="detached").wait(10)
        """
    )
    # The other job's groups live in its namespace: find them in the table.
    by_name = {entry["name"]: entry for entry in placement_group_table().values() if entry["name"]}
    kept = PlacementGroup(PlacementGroupID(bytes.fromhex(by_name["detached_one"]["placement_group_id"])))
    groups.append(kept)
    assert by_name["detached_one"]["state"] == "CREATED"
    wait_for(
        lambda: placement_group_table()[by_name["job_scoped"]["placement_group_id"]]["state"] == "REMOVED",
        message="the job's group to be removed when the job ended",
    )
    wait_for(lambda: ember.available_resources().get("CPU") == 3, message="the job's bundle to be given back")


def test_placement_group_pickles(cluster):
    import pickle

    pg = PlacementGroup.empty()
    assert pickle.loads(pickle.dumps(pg)) == pg


# --- several node managers ----------------------------------------------------------------------------
SECRETS: dict = {}  # head address -> the secret of the cluster the `nodes` fixture started


@pytest.fixture
def nodes():
    """A head with a node manager ({"CPU": 2, "node_a": 1}) and two more joining it ({"CPU": 2,
    "node_b": 1}, {"CPU": 2, "node_c": 1}), all real processes. Yields (head address,
    {"a"|"b"|"c": node id hex}, {node id hex: process})."""
    session = tempfile.mkdtemp(prefix="ember-pg-test-")
    # A killed node is declared dead quickly. The cluster's secret: multinode_driver hands it to drivers.
    env = dict(os.environ, EMBER_NODE_TIMEOUT_S="2", EMBER_CLUSTER_TOKEN=secrets.token_hex(16))
    processes = {}

    def start(resources, address=None):
        args = [sys.executable, "-m", "ember.runtime.cluster", "--watch-stdin", "--session-dir", session]
        args += ["--resources", json.dumps(resources), "--object-store-memory", str(64 * 2**20)]
        args += ["--head"] if address is None else ["--address", address]
        process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        info = json.loads(process.stdout.readline())
        processes[info["node_id"]] = process
        return info

    try:
        head = start({"CPU": 2.0, "node_a": 1.0})
        SECRETS[head["head"]] = env["EMBER_CLUSTER_TOKEN"]
        ids = {"a": head["node_id"]}
        ids["b"] = start({"CPU": 2.0, "node_b": 1.0}, head["head"])["node_id"]
        ids["c"] = start({"CPU": 2.0, "node_c": 1.0}, head["head"])["node_id"]
        yield head["head"], ids, processes
    finally:
        for process in reversed(list(processes.values())):
            if process.poll() is None:
                process.stdin.close()  # EOF: each cleans up and exits
        for process in reversed(list(processes.values())):
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()
        shutil.rmtree(session, ignore_errors=True)


def multinode_driver(address: str, body: str) -> dict:
    """Run ``body`` in a driver of the multi-node cluster; it leaves its answer in ``result``."""
    code = f"""
import json, time
import ember
from ember.util import placement_group, placement_group_table, remove_placement_group
from ember.util.scheduling_strategies import PlacementGroupSchedulingStrategy
ember.init(address={address!r})
deadline = time.time() + 20
while len([n for n in ember.nodes() if n["Alive"]]) < 3 and time.time() < deadline:
    time.sleep(0.05)
result = {{}}
{body}
print("RESULT" + json.dumps(result))
"""
    out = run_driver(code, timeout=90, env={"EMBER_CLUSTER_TOKEN": SECRETS[address]}).stdout
    return json.loads(out.split("RESULT", 1)[1])


def test_strategies_place_bundles_on_the_right_nodes(nodes):
    address, ids, _ = nodes
    result = multinode_driver(
        address,
        """
def placed(bundles, strategy):
    pg = placement_group(bundles, strategy=strategy)
    assert pg.wait(20), strategy
    nodes = placement_group_table(pg)["bundles_to_node_id"]
    remove_placement_group(pg)
    return [nodes[i] for i in range(len(bundles))]

result["strict_spread"] = placed([{"CPU": 1}] * 3, "STRICT_SPREAD")
result["spread"] = placed([{"CPU": 1}] * 3, "SPREAD")
result["strict_pack"] = placed([{"CPU": 1}, {"CPU": 1, "node_b": 1}], "STRICT_PACK")
result["pack"] = placed([{"CPU": 2}, {"CPU": 1}], "PACK")
result["custom"] = placed([{"node_c": 1}, {"node_a": 1}], "STRICT_SPREAD")
too_many = placement_group([{"CPU": 1}] * 4, strategy="STRICT_SPREAD")
result["too_many"] = too_many.wait(1)
result["too_many_state"] = placement_group_table(too_many)["stats"]["scheduling_state"]
""",
    )
    assert sorted(result["strict_spread"]) == sorted(ids.values())
    assert len(set(result["spread"])) == 3
    assert result["strict_pack"] == [ids["b"], ids["b"]]
    assert len(set(result["pack"])) == 2  # no node has 3 CPUs: packed on as few as possible
    assert result["custom"] == [ids["c"], ids["a"]]
    assert result["too_many"] is False and result["too_many_state"] == "INFEASIBLE"


def test_tasks_follow_their_bundle_across_nodes(nodes):
    address, ids, _ = nodes
    result = multinode_driver(
        address,
        """
pg = placement_group([{"CPU": 1, "node_b": 1}, {"CPU": 1, "node_c": 1}], strategy="STRICT_SPREAD")
assert pg.wait(20)

@ember.remote(num_cpus=1)
def node():
    return ember.get_runtime_context().get_node_id()

on = lambda i: node.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i)).remote()
result["b"], result["c"] = ember.get([on(0), on(1)], timeout=30)
""",
    )
    assert result == {"b": ids["b"], "c": ids["c"]}


def test_a_dead_nodes_bundles_are_placed_again(nodes):
    address, ids, processes = nodes
    result = multinode_driver(
        address,
        """
pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD", name="survivor", lifetime="detached")
assert pg.wait(20)
result["before"] = placement_group_table(pg)["bundles_to_node_id"]
""",
    )
    before = {int(i): node for i, node in result["before"].items()}
    assert len(set(before.values())) == 2
    victim = next(node for node in before.values() if node != ids["a"])  # not the head's process
    processes[victim].kill()
    processes[victim].wait()
    result = multinode_driver(
        address,
        f"""
deadline = time.time() + 30
while time.time() < deadline:
    entry = next(e for e in placement_group_table().values() if e["name"] == "survivor")
    if entry["state"] == "CREATED" and {victim!r} not in entry["bundles_to_node_id"].values():
        break
    time.sleep(0.1)
result["after"] = entry["bundles_to_node_id"]
result["state"] = entry["state"]
""",
    )
    after = {int(i): node for i, node in result["after"].items()}
    assert result["state"] == "CREATED"
    assert victim not in after.values() and len(set(after.values())) == 2
    kept = [i for i in before if before[i] != victim]
    assert all(after[i] == before[i] for i in kept), "bundles on live nodes stay where they are"
