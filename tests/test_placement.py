"""Placement groups without processes: the placement policy, the head's table (a state machine)
and the node scheduler's bundle bookkeeping."""

import pytest

from ember.runtime.head.placement import NodeView, feasible_ever, place_bundles
from ember.runtime.head.placement_groups import (
    CREATED,
    PENDING,
    PREPARING,
    REMOVED,
    RESCHEDULING,
    PlacementGroupManager,
    check_bundles,
)
from ember.runtime.node.scheduler import UNIT, LeaseRequest, LeaseScheduler, from_fixed, to_fixed

A, B, C = b"a" * 16, b"b" * 16, b"c" * 16
PG = b"p" * 18


def node(node_id, cpus, available=None, alive=True, **extra):
    total = {"CPU": cpus, **extra}
    free = dict(total) if available is None else {"CPU": available, **extra}
    return NodeView(node_id, total, free, alive)


# --- the policy -------------------------------------------------------------------------------------
def test_pack_uses_one_node_when_it_can():
    nodes = [node(A, 4), node(B, 4)]
    assert place_bundles([{"CPU": 1}] * 3, "PACK", nodes) == [A, A, A]


def test_pack_overflows_to_as_few_nodes_as_possible():
    nodes = [node(A, 2), node(B, 1), node(C, 4, available=3)]
    placed = place_bundles([{"CPU": 1}] * 4, "PACK", nodes)
    assert placed == [C, C, C, A]


def test_spread_uses_distinct_nodes_then_shares():
    nodes = [node(A, 4), node(B, 4)]
    assert sorted(place_bundles([{"CPU": 1}] * 2, "SPREAD", nodes)) == [A, B]
    placed = place_bundles([{"CPU": 1}] * 3, "SPREAD", nodes)
    assert placed.count(A) + placed.count(B) == 3 and set(placed) == {A, B}


def test_spread_falls_back_to_packing_when_spreading_strands_a_bundle():
    # Spreading puts the small bundle on the big node first; packing finds room for both.
    nodes = [node(A, 1), node(B, 3)]
    placed = place_bundles([{"CPU": 1}, {"CPU": 3}], "SPREAD", nodes)
    assert placed is not None and placed[1] == B


def test_strict_pack_needs_one_node_for_everything():
    nodes = [node(A, 2), node(B, 2)]
    assert place_bundles([{"CPU": 1}, {"CPU": 1}], "STRICT_PACK", nodes) == [A, A]
    assert place_bundles([{"CPU": 2}, {"CPU": 1}], "STRICT_PACK", nodes) is None
    assert feasible_ever([{"CPU": 2}, {"CPU": 1}], "STRICT_PACK", nodes) is False


def test_strict_spread_needs_distinct_nodes_and_finds_a_matching():
    nodes = [node(A, 4, gpu_node=1), node(B, 1)]
    # Greedy in order would give the small bundle node A and strand the one only A can hold.
    placed = place_bundles([{"CPU": 1}, {"CPU": 1, "gpu_node": 1}], "STRICT_SPREAD", nodes)
    assert placed == [B, A]
    assert place_bundles([{"CPU": 1}] * 3, "STRICT_SPREAD", nodes) is None
    assert feasible_ever([{"CPU": 1}] * 3, "STRICT_SPREAD", nodes) is False


def test_placement_uses_availability_and_skips_dead_nodes():
    nodes = [node(A, 4, available=0), node(B, 4, alive=False), node(C, 4)]
    assert place_bundles([{"CPU": 2}], "PACK", nodes) == [C]
    busy = [node(A, 4, available=0)]
    assert place_bundles([{"CPU": 2}], "PACK", busy) is None
    assert feasible_ever([{"CPU": 2}], "PACK", busy) is True


def test_occupied_nodes_constrain_replacement():
    nodes = [node(A, 4), node(B, 4), node(C, 4)]
    assert place_bundles([{"CPU": 1}], "STRICT_SPREAD", nodes, occupied=[A, B]) == [C]
    assert place_bundles([{"CPU": 1}], "PACK", nodes, occupied=[B]) == [B]


def test_bad_strategy_and_bundles_are_rejected():
    with pytest.raises(ValueError, match="strategy"):
        place_bundles([{"CPU": 1}], "NEAR", [])
    for bad in ([], [{}], [{"CPU": -1}], [{"CPU": 0}], "CPU", [{"CPU": "1"}]):
        with pytest.raises(ValueError):
            check_bundles(bad, "PACK")


# --- the head's table -------------------------------------------------------------------------------
def manager_with(*views):
    manager = PlacementGroupManager(clock=lambda: 0.0)
    manager.nodes_changed(list(views))
    return manager


def kinds(actions):
    return [a[0] for a in actions]


def test_two_phase_create_then_waiters_hear_created():
    manager = manager_with(node(A, 4), node(B, 4))
    actions = manager.create(PG, [{"CPU": 1}, {"CPU": 1}], "STRICT_SPREAD", requester="me")
    assert kinds(actions) == ["prepare", "prepare"]
    assert {a[1] for a in actions} == {A, B}
    assert manager.table(PG)["state"] == PREPARING
    assert manager.wait(PG, "w1") == []
    assert manager.prepared(PG, A, True) == []  # not all answered yet: nothing committed
    done = manager.prepared(PG, B, True)
    assert sorted(kinds(done)) == ["commit", "commit", "reply"]
    assert ("reply", "w1", CREATED) in done
    entry = manager.table(PG)
    assert entry["state"] == CREATED and set(entry["bundles_to_node_id"].values()) == {A.hex(), B.hex()}
    assert entry["bundles"] == {0: {"CPU": 1.0}, 1: {"CPU": 1.0}}
    assert manager.wait(PG, "w2") == [("reply", "w2", CREATED)]


def test_a_refused_prepare_cancels_the_others_and_retries_on_the_next_report():
    manager = manager_with(node(A, 4), node(B, 4))
    prepares = manager.create(PG, [{"CPU": 1}, {"CPU": 1}], "STRICT_SPREAD")
    assert manager.prepared(PG, A, True) == []
    actions = manager.prepared(PG, B, False)
    assert actions == [("cancel", A, PG, [0 if prepares[0][1] == A else 1])]
    assert manager.table(PG)["state"] == PENDING and manager.needs_retry
    again = manager.nodes_changed([node(A, 4), node(B, 4)])
    assert kinds(again) == ["prepare", "prepare"]
    assert manager.table(PG)["stats"]["scheduling_attempt"] == 2


def test_a_group_waits_for_room_and_infeasible_is_reported_once():
    manager = manager_with(node(A, 2, available=0))
    assert manager.create(PG, [{"CPU": 2}], "PACK") == []  # feasible later, just busy
    assert manager.pending_bundles() == [{"CPU": 2.0}]
    assert kinds(manager.nodes_changed([node(A, 2)])) == ["prepare"]

    other = b"q" * 18
    actions = manager.create(other, [{"CPU": 8}], "PACK", requester="me")
    assert actions == [("infeasible", "me", other, [{"CPU": 8.0}])]
    assert manager.nodes_changed([node(A, 2)]) == []  # said once
    assert manager.table(other)["stats"]["scheduling_state"] == "INFEASIBLE"
    assert kinds(manager.nodes_changed([node(A, 2), node(B, 8)])) == ["prepare"]


def test_in_flight_prepares_are_not_counted_twice():
    manager = manager_with(node(A, 2))
    assert kinds(manager.create(PG, [{"CPU": 2}], "PACK")) == ["prepare"]
    # A report from before the node reserved it still shows 2 CPUs free: the second group waits.
    assert manager.create(b"q" * 18, [{"CPU": 2}], "PACK") == []
    assert manager.nodes_changed([node(A, 2)]) == []


def test_remove_cancels_bundles_frees_the_name_and_answers_waiters():
    manager = manager_with(node(A, 4))
    manager.create(PG, [{"CPU": 1}], "PACK", name="g", namespace="ns")
    manager.prepared(PG, A, True)
    with pytest.raises(ValueError, match="already exists"):
        manager.create(b"q" * 18, [{"CPU": 1}], "PACK", name="g", namespace="ns")
    assert manager.lookup("g", "ns") == PG
    assert manager.remove(PG) == [("cancel", A, PG, [0])]
    assert manager.table(PG)["state"] == REMOVED and manager.lookup("g", "ns") is None
    assert manager.remove(PG) == []
    with pytest.raises(ValueError):
        manager.remove(b"x" * 18)
    assert manager.wait(b"x" * 18, "w") == [("reply", "w", None)]


def test_removed_bundles_are_free_again_without_a_new_report():
    # Made and removed between two reports of the node: the next group must not wait for a report.
    manager = manager_with(node(A, 2))
    manager.create(PG, [{"CPU": 2}], "PACK")
    manager.prepared(PG, A, True)
    manager.remove(PG)
    assert kinds(manager.create(b"q" * 18, [{"CPU": 2}], "PACK")) == ["prepare"]


def test_remove_while_preparing_cancels_what_is_in_flight():
    manager = manager_with(node(A, 4))
    manager.create(PG, [{"CPU": 1}], "PACK")
    manager.wait(PG, "w")
    actions = manager.remove(PG)
    assert ("cancel", A, PG, [0]) in actions and ("reply", "w", REMOVED) in actions
    assert manager.prepared(PG, A, True) == []  # the late yes: its cancel is already on the way


def test_node_death_reschedules_its_bundles_elsewhere():
    manager = manager_with(node(A, 4), node(B, 4), node(C, 4))
    manager.create(PG, [{"CPU": 1}, {"CPU": 1}], "STRICT_SPREAD")
    for node_id in {A, B}:
        manager.prepared(PG, node_id, True)
    table = manager.table(PG)
    assert table["state"] == CREATED
    lost_index = next(i for i, n in table["bundles_to_node_id"].items() if n == A.hex())
    actions = manager.node_died(A)
    assert actions == [("prepare", C, PG, [[lost_index, {"CPU": 1.0}]])]
    assert manager.table(PG)["state"] == PREPARING
    done = manager.prepared(PG, C, True)
    assert done == [("commit", C, PG, [lost_index])]
    entry = manager.table(PG)
    assert entry["state"] == CREATED and set(entry["bundles_to_node_id"].values()) == {B.hex(), C.hex()}


def test_node_death_with_nowhere_to_go_leaves_the_group_rescheduling():
    manager = manager_with(node(A, 4), node(B, 4))
    manager.create(PG, [{"CPU": 1}, {"CPU": 1}], "STRICT_SPREAD")
    manager.prepared(PG, A, True)
    manager.prepared(PG, B, True)
    # One node left can never hold two bundles apart: its creator hears so.
    assert manager.node_died(B) == [("infeasible", None, PG, [{"CPU": 1.0}])]
    assert manager.table(PG)["state"] == RESCHEDULING
    assert manager.pending_bundles() == [{"CPU": 1.0}]
    actions = manager.nodes_changed([node(A, 4), node(B, 4, alive=False), node(C, 4)])
    assert [a[:2] for a in actions] == [("prepare", C)]


def test_node_death_during_prepare_counts_as_a_no():
    manager = manager_with(node(A, 4), node(B, 4), node(C, 4))
    prepares = manager.create(PG, [{"CPU": 1}, {"CPU": 1}], "STRICT_SPREAD")
    first, second = prepares[0][1], prepares[1][1]
    manager.prepared(PG, first, True)
    actions = manager.node_died(second)
    # The survivor's reservation goes back, and the group is placed again without the dead node.
    assert ("cancel", first, PG, [prepares[0][3][0][0]]) in actions
    assert kinds(actions).count("prepare") == 2
    assert all(a[1] != second for a in actions if a[0] == "prepare")


def test_job_finished_removes_its_groups_but_not_detached_ones():
    manager = manager_with(node(A, 4))
    manager.create(PG, [{"CPU": 1}], "PACK", job_id=b"j1")
    manager.prepared(PG, A, True)
    kept = b"k" * 18
    manager.create(kept, [{"CPU": 1}], "PACK", job_id=b"j1", detached=True)
    manager.prepared(kept, A, True)
    assert manager.job_finished(b"j1") == [("cancel", A, PG, [0])]
    assert manager.table(PG)["state"] == REMOVED and manager.table(kept)["state"] == CREATED
    assert set(manager.table()) == {PG.hex(), kept.hex()}


def test_soft_target_is_preferred():
    manager = manager_with(node(A, 4), node(B, 4))
    actions = manager.create(PG, [{"CPU": 1}], "STRICT_PACK", soft_target=B)
    assert actions[0][1] == B


# --- the node's bookkeeping -------------------------------------------------------------------------
def scheduler_with_worker(total=None):
    scheduler = LeaseScheduler(total or {"CPU": 4, "GPU": 2}, max_idle_workers=4)
    scheduler.worker_started(b"w1")
    return scheduler


def test_prepare_reserves_all_or_nothing():
    scheduler = scheduler_with_worker()
    assert scheduler.prepare_bundles(PG, [[0, {"CPU": 3}], [1, {"CPU": 2}]]) is False
    assert scheduler.available["CPU"] == 4 * UNIT
    assert scheduler.prepare_bundles(PG, [[0, {"CPU": 3}], [1, {"GPU": 1}]]) is True
    assert scheduler.available["CPU"] == 1 * UNIT and scheduler.available["GPU"] == 1 * UNIT
    assert scheduler.gpu_free == [UNIT, UNIT]  # devices are picked when work of the group runs
    assert scheduler.prepare_bundles(PG, [[0, {"CPU": 3}]]) is True  # a repeat changes nothing
    assert scheduler.available["CPU"] == 1 * UNIT


def test_commit_adds_group_resources_and_cancel_takes_them_away():
    scheduler = scheduler_with_worker()
    hexid = PG.hex()
    scheduler.prepare_bundles(PG, [[0, {"CPU": 1}], [1, {"CPU": 2}]])
    assert f"CPU_group_{hexid}" not in scheduler.available  # prepared is not usable yet
    scheduler.commit_bundles(PG, [0, 1])
    available = from_fixed(scheduler.available)
    assert available[f"CPU_group_0_{hexid}"] == 1 and available[f"CPU_group_1_{hexid}"] == 2
    assert available[f"CPU_group_{hexid}"] == 3
    assert available[f"bundle_group_0_{hexid}"] == 1000 and available[f"bundle_group_{hexid}"] == 2000
    assert available["CPU"] == 1
    assert from_fixed(scheduler.total)[f"CPU_group_{hexid}"] == 3 and from_fixed(scheduler.total)["CPU"] == 4
    assert scheduler.cancel_bundles(PG, [0, 1]) == []
    assert not [name for name in scheduler.total if hexid in name]
    assert not [name for name in scheduler.available if hexid in name]
    assert scheduler.available["CPU"] == 4 * UNIT


def test_work_of_the_group_runs_in_its_bundle_and_is_stopped_on_cancel():
    scheduler = scheduler_with_worker()
    hexid = PG.hex()
    want = to_fixed({f"CPU_group_0_{hexid}": 1, f"CPU_group_{hexid}": 1, f"bundle_group_{hexid}": 0.001})
    request = LeaseRequest(b"r1", b"owner", want, want)
    assert scheduler.request(request) and not [a for a in scheduler.request(request) if a[0] == "grant"]
    scheduler.queue.clear()
    scheduler.prepare_bundles(PG, [[0, {"CPU": 1}]])
    scheduler.request(request)
    actions = scheduler.commit_bundles(PG, [0])
    assert [a[0] for a in actions] == ["grant"]
    assert scheduler.available[f"CPU_group_0_{hexid}"] == 0
    actions = scheduler.cancel_bundles(PG, [0])
    assert ("stop_leased_worker", b"w1") in actions
    assert not [name for name in scheduler.available if hexid in name]
    assert scheduler.available["CPU"] == 4 * UNIT
    # Its death later gives nothing back twice, and a returned lease does not lend it again.
    scheduler.lease_returned(b"w1")
    assert scheduler.workers[b"w1"].idle is False
    scheduler.worker_died(b"w1")
    assert not [name for name in scheduler.available if hexid in name]
    assert scheduler.available["CPU"] == 4 * UNIT


def test_cancelling_one_bundle_keeps_the_others_usable():
    scheduler = scheduler_with_worker()
    hexid = PG.hex()
    scheduler.prepare_bundles(PG, [[0, {"CPU": 1}], [1, {"CPU": 1}]])
    scheduler.commit_bundles(PG, [0, 1])
    scheduler.cancel_bundles(PG, [1])
    available = from_fixed(scheduler.available)
    assert f"CPU_group_1_{hexid}" not in available
    assert available[f"CPU_group_0_{hexid}"] == 1 and available[f"CPU_group_{hexid}"] == 1
    assert available["CPU"] == 3
