"""A node manager's view of the cluster (ClusterView) and its scheduler's summaries: plain state, no sockets."""

from ember.runtime.message_fields import ClusterNode
from ember.runtime.messages import ClusterView as ClusterViewMessage
from ember.runtime.node.cluster_scheduler import LOCAL
from ember.runtime.node.cluster_view import ClusterView
from ember.runtime.node.scheduler import LeaseRequest, LeaseScheduler, to_fixed

HERE, OTHER, THIRD = bytes([1]) * 16, bytes([2]) * 16, bytes([3]) * 16
GROUP = "ab" * 18


def view_of(scheduler: LeaseScheduler) -> ClusterView:
    return ClusterView(HERE, "127.0.0.1:1000", {"CPU": 2}, scheduler)


def node(node_id: bytes, available: float, alive: bool = True) -> ClusterNode:
    return ClusterNode(node_id, f"127.0.0.1:{node_id[0]}", {"CPU": 2.0}, {"CPU": available}, alive)


def lease(rid: bytes, resources: dict, actor: bool = False) -> LeaseRequest:
    fixed = to_fixed(resources)
    return LeaseRequest(rid, b"owner", fixed, fixed, for_actor=actor)


def test_a_death_is_reported_once_and_the_dead_node_goes_when_the_head_forgets_it():
    cluster = view_of(LeaseScheduler({"CPU": 2}, max_idle_workers=2))
    assert cluster.update(ClusterViewMessage(nodes=[node(OTHER, 2), node(THIRD, 2)])) == []
    died = cluster.update(ClusterViewMessage(nodes=[node(OTHER, 2, alive=False), node(THIRD, 2)]))
    assert died == [(OTHER, "127.0.0.1:2")]
    assert not cluster.node_alive(OTHER)
    assert cluster.update(ClusterViewMessage(nodes=[node(OTHER, 2, alive=False), node(THIRD, 2)])) == []
    cluster.update(ClusterViewMessage(nodes=[node(THIRD, 2)]))  # the head's cap on dead nodes dropped it
    assert set(cluster.nodes) == {HERE, THIRD}
    assert cluster.node_alive(OTHER)  # unknown again: not known to be dead
    cluster.update(ClusterViewMessage(nodes=[]))
    assert THIRD in cluster.nodes  # alive and unlisted: kept until the head says it died


def test_removed_groups_come_as_deltas_or_in_full():
    cluster = view_of(LeaseScheduler({"CPU": 2}, max_idle_workers=2))
    needs_group = lease(b"r1", {f"bundle_group_{GROUP}": 0.001, "CPU_group_" + GROUP: 1})
    assert cluster.removed_group_error(needs_group) is None
    cluster.update(ClusterViewMessage(nodes=[], removed_groups=[GROUP]))
    assert GROUP in str(cluster.removed_group_error(needs_group))
    assert cluster.removed_group_error(lease(b"r2", {"CPU": 1})) is None
    cluster.update(ClusterViewMessage(nodes=[], removed_groups=[], removed_full=True))
    assert cluster.removed_group_error(needs_group) is None


def test_own_entry_is_exact_and_queued_tasks_move_to_a_node_with_room():
    scheduler = LeaseScheduler({"CPU": 2}, max_idle_workers=2)
    cluster = view_of(scheduler)
    for rid in (b"a", b"b", b"c", b"d"):
        scheduler.request(lease(rid, {"CPU": 1}))
    scheduler.request(lease(b"actor", {"CPU": 1}, actor=True))
    for worker_id in (b"w1", b"w2"):
        scheduler.worker_started(worker_id)
    assert cluster.current()[HERE].available["CPU"] == 0
    assert cluster.choose(lease(b"e", {"CPU": 1}))[0] == LOCAL  # alone: queue here
    assert cluster.to_respill() == []  # nowhere else to go
    cluster.update(ClusterViewMessage(nodes=[node(OTHER, 1)]))
    # The first move is counted against the other node before the next is chosen: it has room for one.
    assert [(request.request_id, where, address) for request, where, address in cluster.to_respill()] == [
        (b"c", OTHER, "127.0.0.1:2")
    ]
    assert cluster.nodes[OTHER].available["CPU"] == 0  # counted there until the head says otherwise
    assert cluster.to_respill() == []
    cluster.update(ClusterViewMessage(nodes=[node(OTHER, 2)]))
    assert cluster.charge(lease(b"f", {"CPU": 1}), OTHER) == "127.0.0.1:2"
    assert cluster.nodes[OTHER].available["CPU"] == to_fixed({"CPU": 1})["CPU"]


def test_worker_states_and_gpu_holders():
    scheduler = LeaseScheduler({"CPU": 4, "GPU": 1}, max_idle_workers=4)
    for worker_id in (b"w1", b"w2", b"w3"):
        scheduler.worker_started(worker_id)
    granted = scheduler.request(lease(b"gpu", {"CPU": 1, "GPU": 0.5}))
    granted += scheduler.request(lease(b"cpu", {"CPU": 1}))
    busy = [action[2].worker_id for action in granted if action[0] == "grant"]
    scheduler.blocked(busy[1])
    assert scheduler.worker_states() == {"idle": 1, "busy": 1, "actor": 0, "blocked": 1}
    rows = scheduler.gpu_table({busy[0]: 4242}.get)
    assert rows == [{"gpu_id": 0, "holder": " (pid 4242)", "share": 0.5, "actor": False}]
    assert scheduler.gpu_table(lambda worker_id: None)[0]["holder"] == " (pid ?)"
