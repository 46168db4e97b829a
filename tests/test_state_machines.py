"""The scheduler and store state machines, driven directly (no processes, no sockets)."""

import pytest

from ember.exceptions import ObjectStoreFullError
from ember.runtime.client.task_events import EVENT_PERIOD, TaskEventBatcher
from ember.runtime.node.object_store import StoreState
from ember.runtime.node.object_transfer import CHUNK, ChunkWindow
from ember.runtime.node.scheduler import (
    TOPUP_IDLE_CPUS,
    TOPUP_MAX_STEP,
    TOPUP_MAX_WAIT,
    UNIT,
    LeaseRequest,
    LeaseScheduler,
    to_fixed,
)


def request(rid, resources, running=None, actor=False):
    return LeaseRequest(
        rid, b"client", to_fixed(resources), to_fixed(resources if running is None else running), for_actor=actor
    )


def kinds(actions):
    return [a[0] for a in actions]


def test_grants_within_resources_and_starts_only_needed_workers():
    scheduler = LeaseScheduler({"CPU": 2}, max_idle_workers=2)
    actions = []
    for i in range(5):
        actions += scheduler.request(request(bytes([i]), {"CPU": 1}))
    assert kinds(actions).count("start_worker") == 2  # only two can run at once
    granted = []
    for worker in (b"w1", b"w2", b"w3"):
        granted += [a for a in scheduler.worker_started(worker) if a[0] == "grant"]
    assert len(granted) == 2
    assert scheduler.available["CPU"] == 0
    actions = scheduler.lease_returned(granted[0][2].worker_id)
    assert kinds(actions) == ["grant"]


def test_infeasible_request_is_reported_once_and_kept():
    scheduler = LeaseScheduler({"CPU": 1}, max_idle_workers=1)
    assert kinds(scheduler.request(request(b"a", {"CPU": 4}))) == ["infeasible"]
    assert kinds(scheduler.schedule()) == []
    assert len(scheduler.queue) == 1


def test_blocked_worker_lends_its_cpu():
    scheduler = LeaseScheduler({"CPU": 1}, max_idle_workers=2)
    scheduler.worker_started(b"w1")
    scheduler.request(request(b"a", {"CPU": 1}))
    assert kinds(scheduler.request(request(b"b", {"CPU": 1}))) == []
    assert kinds(scheduler.blocked(b"w1")) == ["start_worker"]
    assert kinds(scheduler.worker_started(b"w2")) == ["grant"]
    scheduler.unblocked(b"w1")
    assert scheduler.available["CPU"] == -UNIT  # briefly oversubscribed, as Ray allows


def test_actor_holds_running_resources_only():
    scheduler = LeaseScheduler({"CPU": 1}, max_idle_workers=1)
    scheduler.worker_started(b"w1")
    actions = scheduler.request(request(b"a", {"CPU": 1}, running={}, actor=True))
    assert kinds(actions) == ["grant"]
    assert scheduler.available["CPU"] == UNIT


def test_gpu_packing_and_fractions():
    scheduler = LeaseScheduler({"CPU": 4, "GPU": 2}, max_idle_workers=4)
    for w in (b"w1", b"w2", b"w3"):
        scheduler.worker_started(w)
    half_a = scheduler.request(request(b"a", {"GPU": 0.5}))[0][2]
    half_b = scheduler.request(request(b"b", {"GPU": 0.5}))[0][2]
    assert half_a.gpu_ids == half_b.gpu_ids == [0]  # one device is filled before the next
    whole = scheduler.request(request(b"c", {"GPU": 1}))[0][2]
    assert whole.gpu_ids == [1]
    scheduler.lease_returned(half_a.worker_id)
    assert scheduler.gpu_free == [UNIT // 2, 0]


def test_worker_death_releases_and_reports_lease():
    scheduler = LeaseScheduler({"CPU": 1}, max_idle_workers=1)
    scheduler.worker_started(b"w1")
    scheduler.request(request(b"a", {"CPU": 1}))
    actions = scheduler.worker_died(b"w1")
    assert actions[0][0] == "lease_lost"
    assert scheduler.available["CPU"] == UNIT


def sealed_store(capacity: int, objects: dict) -> StoreState:
    store = StoreState(capacity)
    for oid, size in objects.items():
        assert store.create(oid, size) == (True, [])
        store.sealed(oid, size)
    return store


def test_store_spills_least_recently_used_and_waits_for_the_copies():
    store = sealed_store(100, {b"a": 30, b"b": 30, b"c": 30})
    store.access(b"a")  # b is now the oldest
    assert store.create(b"d", 30) == (False, [b"b"])  # room once b is on disk: ask again then
    assert store.create(b"d", 30) == (False, [])  # b's copy is still running: nothing more to spill
    assert store.restore(b"b") == ("wait", [])  # a restore of an object being spilled waits for it
    assert store.spill_done(b"b")
    assert store.create(b"d", 30) == (True, [])
    store.sealed(b"d", 30)
    assert store.restore(b"b") == ("wait", [b"c"])
    assert store.spill_done(b"c")
    assert store.restore(b"b") == ("start", [])
    assert store.restore(b"b") == ("restoring", [])  # a second reader waits for the same copy
    assert store.stats()["used"] == 90 and store.stats()["restoring"] == 1
    assert store.restore_done(b"b")
    assert store.restore(b"b") == ("memory", [])
    assert store.stats()["used"] == 90 and store.stats()["spilled"] == 30


def test_store_full_errors():
    store = StoreState(100)
    with pytest.raises(ObjectStoreFullError, match="cannot fit"):
        store.create(b"x", 101)
    store.create(b"y", 80)  # reserved, not yet sealed: cannot be spilled
    with pytest.raises(ObjectStoreFullError, match="full"):
        store.create(b"z", 50)
    with pytest.raises(ValueError):
        StoreState(0)


def test_store_never_spills_pinned_objects():
    store = sealed_store(100, {b"a": 40, b"b": 40})
    assert store.pin(b"a") and store.pin(b"a")
    assert not store.pin(b"zz")  # not in memory: nothing to pin
    assert store.create(b"c", 40) == (False, [b"b"])  # a is the oldest, but mapped by readers
    assert store.spill_done(b"b")
    assert store.create(b"c", 40) == (True, [])
    store.sealed(b"c", 40)
    store.pin(b"c")
    with pytest.raises(ObjectStoreFullError, match="pinned"):
        store.create(b"d", 40)
    store.unpin(b"a")
    with pytest.raises(ObjectStoreFullError):
        store.create(b"d", 40)  # one reader still maps a
    store.unpin(b"a")
    assert store.create(b"d", 40) == (False, [b"a"])


def test_store_copies_that_fail_or_outlive_their_object():
    store = sealed_store(100, {b"a": 60})
    assert store.create(b"b", 60) == (False, [b"a"])
    assert store.spill_done(b"a", ok=False)  # a full disk: a stays in memory
    assert b"a" in store.in_memory and store.stats()["used"] == 60
    assert store.create(b"b", 60) == (False, [b"a"])
    assert store.delete(b"a") == "spilling"  # freed while its copy runs
    assert not store.spill_done(b"a")  # the copy on disk is garbage
    assert store.create(b"b", 60) == (True, [])
    store.sealed(b"b", 60)
    assert store.create(b"c", 60, can_wait=False) == (True, [b"b"])  # a transfer overdraws meanwhile
    assert store.free < 0
    assert store.spill_done(b"b")
    store.sealed(b"c", 60)
    assert store.restore(b"b") == ("wait", [b"c"])
    assert store.spill_done(b"c")
    assert store.restore(b"b") == ("start", [])
    assert store.delete(b"b") == "restoring"
    assert not store.restore_done(b"b")
    assert store.stats()["used"] == 0 and store.free == 100


def test_store_delete_from_memory_and_disk():
    store = sealed_store(100, {b"a": 60})
    assert store.create(b"b", 60) == (False, [b"a"])
    store.spill_done(b"a")
    store.create(b"b", 60)
    store.sealed(b"b", 60)
    assert store.delete(b"a") == "spilled"
    assert store.delete(b"b") == "memory"
    assert store.delete(b"b") is None


def test_chunk_window_asks_for_a_window_and_gives_up_after_retries():
    window = ChunkWindow(window=3, timeout=1.0, retries=1)
    assert window.start(0.0) == [0, 1, 2]
    window.sized(4 * CHUNK + 1)  # five chunks
    assert window.arrived(1, 0.5) == [3]
    assert window.arrived(1, 0.5) is None  # a duplicate
    assert window.expired(0.9) == []
    assert window.expired(1.0) == [0, 2]  # late: asked for again, once
    assert window.arrived(0, 1.2) == [4]
    assert window.expired(2.0) is None  # chunk 2 is late again: the holder is gone
    small = ChunkWindow(window=4)
    assert small.start(0.0) == [0, 1, 2, 3]
    small.sized(10)
    assert small.arrived(0, 0.0) == [] and small.done()
    assert small.arrived(2, 0.0) is None  # past the end


def test_surplus_worker_that_refuses_to_exit_is_idle_again():
    scheduler = LeaseScheduler({"CPU": 1}, max_idle_workers=1)
    scheduler.worker_started(b"w1")
    scheduler.worker_started(b"w2")
    grant = scheduler.request(request(b"a", {"CPU": 1}))[0]
    assert kinds(scheduler.lease_returned(grant[2].worker_id)) == ["stop_worker"]
    assert grant[2].worker_id not in scheduler.workers
    assert kinds(scheduler.worker_kept(grant[2].worker_id)) == []
    assert kinds(scheduler.request(request(b"b", {"CPU": 1}))) == ["grant"]


# --- reference counting ------------------------------------------------------------------------------
from ember.runtime.client.reference_table import ReferenceTable  # noqa: E402

ME, OTHER, CALLER = "me:1", "other:2", "caller:3"


def table():
    t = ReferenceTable()
    t.address = ME
    return t


def test_owned_object_is_freed_when_the_last_local_ref_goes():
    t = table()
    assert t.own(b"x", ready=True) == []
    t.add_local(b"x", ME)
    t.add_local(b"x", ME)
    assert t.remove_local(b"x") == []
    assert t.remove_local(b"x") == [("free", b"x")]
    assert not t.holds_anything()


def test_pending_object_is_freed_when_its_value_arrives():
    t = table()
    t.own(b"x", ready=False)
    t.add_local(b"x", ME)
    assert t.remove_local(b"x") == []  # the task still runs
    assert t.ready(b"x") == [("free", b"x")]


def test_borrowers_keep_an_object():
    t = table()
    t.own(b"x", ready=True)
    t.add_local(b"x", ME)
    t.add_borrower(b"x", OTHER)
    assert t.remove_local(b"x") == []
    assert t.remove_borrower(b"x", OTHER) == [("free", b"x")]


def test_contained_refs_live_as_long_as_the_containing_object():
    t = table()
    t.own(b"inner", ready=True)
    t.add_local(b"inner", ME)
    assert t.own(b"outer", ready=True, contained=[(b"inner", ME), (b"far", OTHER)]) == [("borrow", b"far", OTHER)]
    t.add_local(b"outer", ME)
    assert t.remove_local(b"inner") == []
    assert t.remove_local(b"outer") == [("free", b"outer"), ("free", b"inner"), ("unborrow", b"far", OTHER)]


def test_foreign_refs_register_once_and_unregister_at_zero():
    t = table()
    assert t.add_local(b"f", OTHER) == [("borrow", b"f", OTHER)]
    assert t.add_local(b"f", OTHER) == []
    assert t.remove_local(b"f") == []
    assert t.remove_local(b"f") == [("unborrow", b"f", OTHER)]


def test_refs_received_in_a_task_register_at_its_end():
    t = table()
    assert t.add_local(b"kept", OTHER, in_task=True) == [("defer_borrow", b"kept")]
    assert t.add_local(b"dropped", OTHER, in_task=True) == [("defer_borrow", b"dropped")]
    assert t.remove_local(b"dropped") == [("unborrow", b"dropped", None)]  # the owner never heard of us
    assert t.take_deferred([b"kept", b"dropped"]) == [(b"kept", OTHER)]
    assert t.remove_local(b"kept") == [("unborrow", b"kept", OTHER)]


def test_returned_refs_are_held_until_the_caller_borrows_them():
    t = table()
    t.own(b"x", ready=True)
    t.add_local(b"x", ME)
    t.returned_inside_value(b"x", ME, CALLER)
    assert t.remove_local(b"x") == []  # the reply is on its way to the caller
    t.add_borrower(b"x", CALLER)  # the caller holds it now; our hold for it ends
    assert t.remove_borrower(b"x", CALLER) == [("free", b"x")]


def test_forget_frees_at_once():
    t = table()
    t.own(b"x", ready=True, contained=[(b"far", OTHER)])
    t.add_local(b"x", ME)
    assert t.forget(b"x") == [("free", b"x"), ("unborrow", b"far", OTHER)]


def test_blocked_worker_in_a_placement_group_lends_its_bundle_cpu():
    group = {"CPU_group_ab": 1, "bundle_group_ab": 0.001}
    scheduler = LeaseScheduler({"CPU": 1, "CPU_group_ab": 1, "bundle_group_ab": 1000}, max_idle_workers=2)
    scheduler.worker_started(b"w1")
    scheduler.request(request(b"a", group))
    assert kinds(scheduler.request(request(b"b", group))) == []
    assert kinds(scheduler.blocked(b"w1")) == ["start_worker"]  # the child task can run meanwhile
    assert kinds(scheduler.worker_started(b"w2")) == ["grant"]


# --- the cluster-level policy (which node runs a request) ----------------------------------------
from ember.runtime.node.cluster_scheduler import INFEASIBLE, LOCAL, ClusterPolicy, NodeView  # noqa: E402


def views(*nodes):
    return {
        bytes([i]): NodeView(bytes([i]), to_fixed(total), to_fixed(available), address=f"node{i}")
        for i, (total, available) in enumerate(nodes)
    }


def test_hybrid_packs_locally_below_half_then_spreads_to_the_least_used():
    policy = ClusterPolicy(bytes([0]))
    cpu = to_fixed({"CPU": 1})
    nodes = views(({"CPU": 4}, {"CPU": 3}), ({"CPU": 4}, {"CPU": 1}), ({"CPU": 4}, {"CPU": 4}))
    assert policy.choose_node(cpu, None, nodes) == (LOCAL, None)  # 25% used: pack here
    nodes[bytes([0])].available = to_fixed({"CPU": 2})  # 50% used: spread to the least used node
    assert policy.choose_node(cpu, None, nodes) == (bytes([2]), None)
    for view in nodes.values():
        view.available = {}
    assert policy.choose_node(cpu, None, nodes) == (LOCAL, None)  # all busy: queue here
    assert policy.choose_node(to_fixed({"CPU": 8}), None, nodes)[0] == INFEASIBLE


def test_spread_round_robins_and_spillback_is_charged():
    policy = ClusterPolicy(bytes([0]))
    nodes = views(*[({"CPU": 2}, {"CPU": 2})] * 3)
    chosen = [policy.choose_node(to_fixed({"CPU": 1}), "SPREAD", nodes)[0] for _ in range(3)]
    assert chosen == [LOCAL, bytes([1]), bytes([2])]
    ClusterPolicy.charge(nodes[bytes([1])], to_fixed({"CPU": 2}))
    assert nodes[bytes([1])].available["CPU"] == 0


def test_node_affinity_hard_soft_and_spill():
    policy = ClusterPolicy(bytes([0]))
    nodes = views(({"CPU": 2}, {"CPU": 2}), ({"CPU": 2}, {}))
    target = bytes([1]).hex()
    cpu = to_fixed({"CPU": 1})
    assert policy.choose_node(cpu, {"node": target, "soft": False}, nodes) == (bytes([1]), None)  # queues there
    assert policy.choose_node(cpu, {"node": target, "soft": True, "spill": True}, nodes) == (LOCAL, None)
    nodes[bytes([1])].alive = False
    assert policy.choose_node(cpu, {"node": target, "soft": True}, nodes) == (LOCAL, None)
    kind, message = policy.choose_node(cpu, {"node": target, "soft": False}, nodes)
    assert kind == "error" and target in message


def test_task_events_go_out_at_most_once_a_period():
    # A steady stream of short tasks must not cost the head one message per task: after a batch
    # goes out, the next waits a whole period, even when a younger record is already held.
    batcher = TaskEventBatcher(lambda: b"job")
    batcher.note("submitted", b"a")
    batcher.note("submitted", b"b")
    first = batcher.held[0][4]
    batcher.held[1][4] = first + EVENT_PERIOD / 2  # b was first seen half a period after a
    assert [record[1] for record in batcher.take_due(first + EVENT_PERIOD)] == [b"a"]
    assert not batcher.due(first + EVENT_PERIOD * 1.5)  # b's own due time: too soon after a batch
    # A microsecond past two periods: (first + P) + P and first + 2 * P may differ in the last bit.
    assert batcher.due(first + EVENT_PERIOD * 2 + 1e-6)
    assert [record[1] for record in batcher.take_due(first + EVENT_PERIOD * 2 + 1e-6)] == [b"b"]
    assert not batcher


# --- the worker pool kept topped up, and what a killed worker holds --------------------------------


def started_pool(scheduler, *worker_ids):
    actions = []
    for worker_id in worker_ids:
        actions += scheduler.worker_started(worker_id)
    return actions


def test_actor_grant_starts_a_replacement_worker_for_the_pool():
    scheduler = LeaseScheduler({"CPU": 2}, max_idle_workers=2, min_idle_workers=2)
    scheduler.starting = 2  # the node prestarted two
    assert kinds(started_pool(scheduler, b"w1", b"w2")) == []
    actions = scheduler.request(request(b"a", {"CPU": 1}, actor=True))
    # The actor takes w1 for good; one worker is started at once so two are left for the next lease.
    assert kinds(actions) == ["grant", "start_worker"]
    assert kinds(scheduler.request(request(b"b", {"CPU": 1}, actor=True))) == ["grant", "start_worker"]
    assert scheduler.starting == 2
    # Started ones are idle in the pool; nothing more is started while the pool is full.
    assert kinds(started_pool(scheduler, b"w3", b"w4")) == []
    assert kinds(scheduler.schedule()) == []


def test_pool_top_up_is_deferred_after_an_actor_grant():
    scheduler = LeaseScheduler({"CPU": 2}, max_idle_workers=2, min_idle_workers=2, topup_delay=0.05)
    scheduler.starting = 2  # the node prestarted two
    assert kinds(started_pool(scheduler, b"w1", b"w2")) == []
    # The replacement is not started with the grant: the caller is asked to come back after the delay.
    assert scheduler.request(request(b"a", {"CPU": 1}, actor=True))[1:] == [("topup_after", 0.05)]
    # A second grant meanwhile adds to the deferred top-ups; the delay is asked for once.
    assert kinds(scheduler.request(request(b"b", {"CPU": 1}, actor=True))) == ["grant"]
    assert scheduler.starting == 0 and scheduler.deferred == 2
    assert kinds(scheduler.topup_due()) == ["start_worker", "start_worker"]
    assert scheduler.starting == 2 and scheduler.deferred == 0
    assert kinds(scheduler.topup_due()) == []  # a later due call starts nothing more
    with pytest.raises(ValueError, match="topup_delay"):
        LeaseScheduler({"CPU": 1}, max_idle_workers=1, topup_delay=-1)


def test_a_deferred_top_up_waits_while_the_cpus_are_busy():
    scheduler = LeaseScheduler({"CPU": 2}, max_idle_workers=2, min_idle_workers=2, topup_delay=0.05)
    scheduler.starting = 2
    started_pool(scheduler, b"w1", b"w2")
    assert scheduler.request(request(b"a", {"CPU": 1}, actor=True))[1:] == [("topup_after", 0.05)]
    # Busy CPUs over the wait: it waits again, twice as long each time, each wait at most a second...
    steps = []
    while True:
        actions = scheduler.topup_due(idle_cpus=0.1)
        if kinds(actions) != ["topup_after"]:
            break
        steps.append(actions[0][1])
    assert steps[:4] == [0.1, 0.2, 0.4, 0.8] and max(steps) == TOPUP_MAX_STEP
    # ...and starts the worker once it has waited TOPUP_MAX_WAIT in all, busy or not.
    assert kinds(actions) == ["start_worker"]
    assert 0.05 + sum(steps) == pytest.approx(TOPUP_MAX_WAIT)
    assert scheduler.deferred == 0 and scheduler.deferred_for == 0

    # An idle CPU over a wait starts it at once; so does a meter that cannot tell (None).
    scheduler.worker_started(b"w3")
    for idle in (TOPUP_IDLE_CPUS, None):
        grant = scheduler.request(request(b"actor" + str(idle).encode(), {"CPU": 0}, actor=True))
        assert kinds(grant) == ["grant", "topup_after"]
        assert kinds(scheduler.topup_due(idle_cpus=0.0)) == ["topup_after"]
        assert kinds(scheduler.topup_due(idle_cpus=idle)) == ["start_worker"]
        scheduler.worker_started(b"w-" + str(idle).encode())


def test_a_lease_without_an_idle_worker_starts_the_deferred_top_ups_at_once():
    scheduler = LeaseScheduler({"CPU": 4}, max_idle_workers=2, min_idle_workers=2, topup_delay=0.05)
    scheduler.starting = 2
    started_pool(scheduler, b"w1", b"w2")
    scheduler.request(request(b"a", {"CPU": 1}, actor=True))
    scheduler.request(request(b"b", {"CPU": 1}, actor=True))
    # The third actor would wait for a worker: both deferred top-ups start now, not after the delay.
    assert kinds(scheduler.request(request(b"c", {"CPU": 1}, actor=True))) == ["start_worker", "start_worker"]
    assert scheduler.deferred == 0
    assert kinds(scheduler.topup_due()) == []  # the delay's end finds nothing missing
    actions = scheduler.worker_started(b"w3")
    assert kinds(actions) == ["grant", "topup_after"]  # c's grant defers its own replacement
    assert kinds(scheduler.worker_started(b"w4")) == []  # w4 counts for the pool: one top-up left
    assert kinds(scheduler.topup_due()) == ["start_worker"]


def test_task_leases_do_not_top_up_the_pool():
    # A task's worker comes back to the pool when its lease is returned: no replacement is started.
    scheduler = LeaseScheduler({"CPU": 2}, max_idle_workers=2, min_idle_workers=2)
    started_pool(scheduler, b"w1", b"w2")
    assert kinds(scheduler.request(request(b"a", {"CPU": 1}))) == ["grant"]
    assert kinds(scheduler.request(request(b"b", {"CPU": 1}))) == ["grant"]
    assert kinds(scheduler.lease_returned(b"w1")) == []


def test_pool_top_up_stays_within_the_idle_cap():
    scheduler = LeaseScheduler({"CPU": 4}, max_idle_workers=2, min_idle_workers=2)
    started_pool(scheduler, b"w1", b"w2")
    for i in range(3):  # three actors: each replacement keeps two workers that are not an actor's
        actions = scheduler.request(request(bytes([i]), {"CPU": 1}, actor=True))
        assert kinds(actions) == ["grant", "start_worker"]
        started_pool(scheduler, b"r%d" % i)
    idle = [w for w in scheduler.workers.values() if w.idle]
    assert len(idle) == 2 <= scheduler.max_idle_workers
    with pytest.raises(ValueError, match="min_idle_workers"):
        LeaseScheduler({"CPU": 1}, max_idle_workers=1, min_idle_workers=2)


def test_pool_is_not_topped_up_after_a_failed_start():
    scheduler = LeaseScheduler({"CPU": 2}, max_idle_workers=2, min_idle_workers=1)
    scheduler.starting = 1
    # A worker that dies before it registers is not replaced in a loop: only a request starts one.
    assert kinds(scheduler.worker_start_failed()) == []
    assert kinds(scheduler.request(request(b"a", {"CPU": 1}))) == ["start_worker"]
    # Once one has started, the pool is kept again.
    assert kinds(scheduler.worker_started(b"w1")) == ["grant"]
    assert kinds(scheduler.request(request(b"b", {"CPU": 1}, actor=True))) == ["start_worker"]


def test_killed_worker_frees_its_resources_at_once_and_is_never_leased_again():
    scheduler = LeaseScheduler({"CPU": 1}, max_idle_workers=2)
    started_pool(scheduler, b"w1", b"w2")
    scheduler.request(request(b"a", {"CPU": 1}, actor=True))
    assert kinds(scheduler.request(request(b"b", {"CPU": 1}, actor=True))) == []  # no CPU left
    actions = scheduler.worker_killed(b"w1")
    # The queued actor gets the CPU now, on the other worker, before w1 is reaped.
    assert kinds(actions) == ["grant"] and actions[0][2].worker_id == b"w2"
    assert scheduler.available["CPU"] == 0
    assert scheduler.worker_killed(b"w1") == []  # a second kill changes nothing
    assert kinds(scheduler.lease_returned(b"w1")) == []  # nor a late return of its lease
    actions = scheduler.worker_died(b"w1")
    assert kinds(actions) == ["lease_lost"]  # its death is still reported, and releases nothing twice
    assert scheduler.available["CPU"] == 0


def test_killed_idle_worker_is_not_leased_while_it_dies():
    scheduler = LeaseScheduler({"CPU": 2}, max_idle_workers=2)
    started_pool(scheduler, b"w1")
    scheduler.worker_killed(b"w1")
    assert kinds(scheduler.request(request(b"a", {"CPU": 1}))) == ["start_worker"]


def test_killed_worker_keeps_its_gpus_until_it_is_reaped():
    scheduler = LeaseScheduler({"CPU": 2, "GPU": 1}, max_idle_workers=2)
    started_pool(scheduler, b"w1", b"w2")
    scheduler.request(request(b"a", {"CPU": 1, "GPU": 1}, actor=True))
    scheduler.request(request(b"b", {"CPU": 1, "GPU": 1}, actor=True))
    assert kinds(scheduler.worker_killed(b"w1")) == []  # its device memory is freed only at exit
    assert scheduler.gpu_free == [0]
    actions = scheduler.worker_died(b"w1")
    assert kinds(actions) == ["lease_lost", "grant"]
    assert scheduler.gpu_free == [0] and actions[1][2].gpu_ids == [0]


# --- worker pools per runtime env ------------------------------------------------------------------------
def env_request(rid, env, cpus=1):
    return LeaseRequest(rid, b"client", to_fixed({"CPU": cpus}), to_fixed({"CPU": cpus}), env=env)


def test_a_lease_for_an_env_gets_only_a_worker_started_in_that_env():
    scheduler = LeaseScheduler({"CPU": 2}, max_idle_workers=2)
    scheduler.worker_started(b"plain")  # idle, in the plain env
    actions = scheduler.request(env_request(b"a", "E"))
    assert actions == [("start_worker", "E")]  # the plain idle worker is not granted
    actions = scheduler.worker_started(b"e1", env="E")
    assert [(a[0], a[2].worker_id) for a in actions if a[0] == "grant"] == [("grant", b"e1")]
    # A plain request still goes to the plain worker, another env's to a worker of its own.
    assert [a[2].worker_id for a in scheduler.request(env_request(b"b", "")) if a[0] == "grant"] == [b"plain"]
    scheduler.lease_returned(b"e1")
    assert [a for a in scheduler.request(env_request(b"c", "F")) if a[0] != "stop_worker"] == [("start_worker", "F")]


def test_starts_per_env_are_counted_apart():
    scheduler = LeaseScheduler({"CPU": 4}, max_idle_workers=4)
    actions = scheduler.request(env_request(b"a", "E")) + scheduler.request(env_request(b"b", "E"))
    actions += scheduler.request(env_request(b"c", ""))
    assert sorted(a for a in actions if a[0] == "start_worker") == [("start_worker", ""), *[("start_worker", "E")] * 2]
    assert scheduler.starting == 3 and scheduler.starting_envs == {"E": 2}
    scheduler.worker_started(b"w1", env="E")
    scheduler.worker_started(b"w2", env="E")
    assert scheduler.starting == 1 and scheduler.starting_envs == {}


def test_idle_workers_of_other_envs_are_retired_under_the_idle_cap():
    scheduler = LeaseScheduler({"CPU": 2}, max_idle_workers=2, min_idle_workers=2)
    scheduler.worker_started(b"p1")
    scheduler.worker_started(b"p2")
    actions = scheduler.request(env_request(b"a", "E"))
    # One plain worker makes way for the one started for E: the pool keeps its size, no churn.
    assert sorted(actions) == [("start_worker", "E"), ("stop_worker", b"p1")]
    assert kinds(scheduler.worker_started(b"e1", env="E")) == ["grant"]
    assert scheduler.lease_returned(b"e1") == []  # two idle (p2, e1): within the cap, both kept
    # Plain work wanted again: a busy-free plain worker takes it, E's idle worker is not touched.
    assert [a[2].worker_id for a in scheduler.request(env_request(b"b", "")) if a[0] == "grant"] == [b"p2"]


def test_a_failed_env_fails_its_requests_once_and_leaves_others():
    scheduler = LeaseScheduler({"CPU": 2}, max_idle_workers=2)
    scheduler.request(env_request(b"a", "bad"))
    scheduler.request(env_request(b"b", "bad"))
    scheduler.request(env_request(b"c", "good"))
    actions = scheduler.env_failed("bad", "No matching distribution", starts=2)
    assert [(a[0], a[1].request_id, a[2]) for a in actions if a[0] == "lease_failed"] == [
        ("lease_failed", b"a", "No matching distribution"),
        ("lease_failed", b"b", "No matching distribution"),
    ]
    assert actions[2:] == [("start_worker", "good")]  # the CPUs the failed requests would have held are free
    assert scheduler.starting == 1 and scheduler.starting_envs == {"good": 1}
    assert [r.request_id for r in scheduler.queue] == [b"c"]
    assert scheduler.start_failures == 0  # the plain pool is still topped up
