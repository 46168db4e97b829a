"""Bounded state: what ended is forgotten past a cap, and a long run stays the same size.

The eviction rules are tested as plain state; the soak runs ``benchmarks/soak.py`` scaled down, on a
cluster of its own started with small caps, and checks the tables, memory and file descriptors of
the cluster process and of the driver after warm-up.
"""

import json
import os
import sys

import pytest
from conftest import run_driver

from ember.runtime.bounded import DESTROYED_ACTORS, EndedCache, cap_from_env
from ember.runtime.head.placement_groups import REMOVED, PlacementGroupManager

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- eviction rules (no sockets) -----------------------------------------------------------------
def test_ended_cache_evicts_oldest_first():
    cache = EndedCache(3)
    assert [cache.add(key) for key in "abc"] == [[], [], []]
    assert cache.add("b") == []  # ended again: stays where it was
    assert cache.add("d") == ["a"]
    assert cache.add("e") == ["b"]
    assert list(cache) == ["c", "d", "e"] and len(cache) == 3
    cache.discard("d")
    assert cache.add("f") == [] and list(cache) == ["c", "e", "f"]
    assert "c" in cache and "a" not in cache


@pytest.mark.parametrize("capacity, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_ended_cache_rejects_bad_capacity(capacity, error):
    with pytest.raises(error):
        EndedCache(capacity)


def test_caps_come_from_the_environment():
    name, default = DESTROYED_ACTORS
    assert cap_from_env(DESTROYED_ACTORS, {}) == default == 1000
    assert cap_from_env(DESTROYED_ACTORS, {name: "50"}) == 50
    for bad in ("0", "-3", "many"):
        with pytest.raises(ValueError, match=name):
            cap_from_env(DESTROYED_ACTORS, {name: bad})


def _removed_groups(count: int, cap: int) -> tuple:
    groups = PlacementGroupManager(removed_cap=cap)
    ids = [bytes([i]) * 8 for i in range(count)]
    for pg_id in ids:
        groups.create(pg_id, [{"CPU": 1}], "PACK")  # no nodes: it waits, and can still be removed
        groups.remove(pg_id)
    return groups, ids


def test_removed_placement_groups_are_forgotten_past_the_cap():
    groups, ids = _removed_groups(5, cap=3)
    assert list(groups.groups) == ids[2:]
    assert groups.removed_ids() == [pg_id.hex() for pg_id in ids[2:]]
    # A forgotten group looks like one never made: no entry, and waiting on it is an error.
    assert groups.table(ids[0]) is None
    assert groups.wait(ids[0], "waiter") == [("reply", "waiter", None)]
    assert groups.table(ids[4])["state"] == REMOVED
    with pytest.raises(ValueError, match="does not exist"):
        groups.remove(ids[0])


def test_removals_go_to_node_managers_as_deltas():
    groups, ids = _removed_groups(5, cap=3)
    hexes = [pg_id.hex() for pg_id in ids]
    assert groups.removal_version == 5
    assert groups.removals_since(5) == ([], False)
    assert groups.removals_since(4) == (hexes[4:], False)
    assert groups.removals_since(2) == (hexes[2:], False)  # saw removals 1 and 2: nothing missed
    # New (0), or behind by removals no longer remembered: everything remembered, to replace its set.
    assert groups.removals_since(0) == (hexes[2:], True)
    assert groups.removals_since(1) == (hexes[2:], True)
    assert PlacementGroupManager(removed_cap=3).removals_since(0) == ([], False)


# --- the soak -----------------------------------------------------------------------------------
CAP = 50
SOAK = """
import json, sys
sys.path.insert(0, {bench!r})
import soak
result = soak.main(["--tasks", "20000", "--actors", "300", "--groups", "300", "--retiring", "30", "--json"])
print("RESULT " + json.dumps(result))
"""


def test_soak_stays_bounded():
    env = {
        "EMBER_MAXIMUM_DESTROYED_ACTOR_CACHED_COUNT": str(CAP),
        "EMBER_MAXIMUM_REMOVED_PLACEMENT_GROUP_CACHED_COUNT": str(CAP),
        "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
    }
    out = run_driver(SOAK.format(bench=os.path.join(ROOT, "benchmarks")), timeout=400, env=env).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    phases = {phase["phase"]: phase for phase in result["phases"]}
    for phase in result["phases"]:
        sys.stdout.write(json.dumps(phase, sort_keys=True) + "\n")

    # The head forgets dead actors and removed groups past the caps; the node manager too.
    for name in ("actors", "groups", "batch2"):
        head, node = phases[name]["tables"]["head"], phases[name]["tables"]["node_manager"]
        assert head["actors"] <= CAP and head["dead_actors"] <= CAP, head
        assert head["placement_groups"] <= CAP and head["removed_placement_groups"] <= CAP, head
        assert node["removed_groups"] <= CAP, node
    end = phases["batch2"]["tables"]
    assert end["head"]["named"] == 0 and end["head"]["pending_requests"] == 0, end["head"]
    assert end["head"]["worker_sockets"] == 0 and end["head"]["placement_group_names"] == 0, end["head"]
    assert end["head"]["nodes"] == 1, end["head"]  # (jobs: another driver on the machine may attach)
    # The driver keeps no trace of the finished tasks, dead actors and retired workers.
    driver = end["driver"]
    assert driver["waiting"] == 0 and driver["specs"] == 0 and driver["actors"] == 0, driver
    assert driver["shapes"] <= 2 and driver["objects"] == 0 and driver["dep_waiters"] == 0, driver
    # Sockets to workers: a few whose leases went back stay cached, none to the retired max_calls ones.
    assert driver["peers"] < result["retiring"], driver

    # After warm-up, memory and file descriptors stay flat (a margin for a loaded machine; fds vary
    # with the number of idle workers the node manager keeps).
    first, last = phases["batch1"], phases["batch2"]
    for who in ("cluster", "driver"):
        assert last[who]["rss_mb"] <= first[who]["rss_mb"] * 1.15, (who, first[who], last[who])
        assert last[who]["fds"] <= first[who]["fds"] * 1.1 + 4, (who, first[who], last[who])


def test_forgotten_dead_actor_answers_as_dead():
    """Past the cap a dead actor's entry is gone; its handles and its name still behave as in Ray."""
    code = """
    import ember as ray
    from ember.runtime import protocol
    from ember.runtime.client.core_client import current_client

    ray.init(num_cpus=1)

    @ray.remote(num_cpus=0)
    class A:
        def ping(self):
            return "pong"

    first = A.options(name="first").remote()
    assert ray.get(first.ping.remote()) == "pong"
    ray.kill(first)
    for _ in range(3):  # with a cap of 2, these push the first one out
        other = A.remote()
        ray.get(other.ping.remote())
        ray.kill(other)
    sizes = current_client().request("head", {"op": protocol.TABLE_SIZES})[0].sizes
    assert sizes["actors"] == 2 and sizes["dead_actors"] == 2, sizes
    try:
        ray.get(first.ping.remote(), timeout=30)
    except ray.exceptions.ActorDiedError as error:
        print("DIED", str(error).splitlines()[0])
    try:
        ray.get_actor("first")
    except ValueError as error:
        print("NOT FOUND", error)
    ray.shutdown()
    """
    out = run_driver(code, env={"EMBER_MAXIMUM_DESTROYED_ACTOR_CACHED_COUNT": "2"}).stdout
    assert "DIED" in out and "NOT FOUND" in out, out


def test_finished_jobs_are_forgotten_past_the_cap(tmp_path):
    """Each driver is a job; the head keeps the finished ones only up to the cap."""
    code = """
    import subprocess, sys, textwrap
    import ember as ray
    from ember.runtime import protocol
    from ember.runtime.client.core_client import current_client

    context = ray.init(num_cpus=1)
    driver = textwrap.dedent('''
        import sys
        import ember as ray
        ray.init(address=sys.argv[1])
        ray.shutdown()
    ''')
    for _ in range(4):
        subprocess.run([sys.executable, "-c", driver, context.address_info["address"]], check=True, timeout=60)
    sizes = current_client().request("head", {"op": protocol.TABLE_SIZES})[0].sizes
    print("JOBS", sizes["jobs"])
    ray.shutdown()
    """
    out = run_driver(code, timeout=120, env={"EMBER_MAXIMUM_DEAD_JOB_CACHED_COUNT": "2"}).stdout
    assert "JOBS 3" in out, out  # this driver's live job and the last two finished ones
