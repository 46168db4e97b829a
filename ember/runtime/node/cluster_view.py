"""What one node manager knows of the rest of the cluster, and where its lease requests should go.

Data flow::

    head --cluster_view (nodes, removed placement groups)--> node manager --update--> ClusterView
                                                                  <--nodes that died--+
    lease request --> node manager --choose--> ClusterView --ClusterPolicy--> here | spill to a node | refuse
    view changed  --> node manager --to_respill--> ClusterView --(request, node, address)--> spillback replies

A plain state machine: the view of every node as the head last pushed it (this node's own entry
read from its :class:`~ember.runtime.node.scheduler.LeaseScheduler`, so it is exact), corrected by
what this node spilled since (:meth:`ClusterPolicy.charge`), and the placement groups the head
removed. The node manager sends every message; the object transfer reads ``nodes`` for the peers'
addresses (the same dict, updated in place).
"""

from ember.runtime.bounded import REMOVED_PLACEMENT_GROUPS, EndedCache, cap_from_env
from ember.runtime.node.cluster_scheduler import INFEASIBLE, LOCAL, ClusterPolicy, NodeView, fits, groups_of
from ember.runtime.node.scheduler import LeaseRequest, LeaseScheduler, to_fixed


class ClusterView:
    """One node's view of the cluster (``nodes``: node id -> NodeView) and the removed placement groups."""

    def __init__(self, node_id: bytes, address: str, resources: dict, scheduler: LeaseScheduler):
        self.node_id = node_id
        self.scheduler = scheduler  # read for this node's own entry and its queue, never changed here
        self.policy = ClusterPolicy(node_id)
        self.nodes: dict[bytes, NodeView] = {
            node_id: NodeView(node_id, to_fixed(resources), to_fixed(resources), address=address)
        }
        # Hex ids of removed placement groups, from the cluster view's deltas; as bounded as the head's.
        self.removed_groups = EndedCache(cap_from_env(REMOVED_PLACEMENT_GROUPS))

    def current(self) -> dict:
        """The cluster as the head last described it, with this node's own entry exact."""
        local = self.nodes[self.node_id]
        local.total = self.scheduler.total
        local.available = self.scheduler.available
        return self.nodes

    def choose(self, request: LeaseRequest) -> tuple:
        """Where ``request`` should run: see :meth:`ClusterPolicy.choose_node`."""
        return self.policy.choose_node(request.resources, request.strategy, self.current())

    def charge(self, request: LeaseRequest, node_id: bytes) -> str:
        """``request`` is spilled to ``node_id``: count it there; returns that node's address."""
        node = self.nodes[node_id]
        self.policy.charge(node, request.resources)
        return node.address

    def removed_group_error(self, request: LeaseRequest) -> ValueError | None:
        """The error for a request that needs the bundles of a removed placement group, if it does."""
        removed = {group for group in groups_of(request.resources) if group in self.removed_groups}
        if not removed:
            return None
        return ValueError(
            f"The placement group {removed.pop()} was removed: the task or actor that needs its bundles "
            "cannot be scheduled."
        )

    def to_respill(self) -> list:
        """``[(request, node id, address)]``: requests queued here that another node could run now,
        each charged to that node as it is chosen (so the next one sees it fuller)."""
        nodes = self.current()
        if sum(node.alive for node in nodes.values()) < 2:
            return []  # nowhere else to go
        moves = []
        for request in list(self.scheduler.queue):
            if request.for_actor or (request.spilled and self.scheduler.feasible(request.resources)):
                continue
            where, _ = self.policy.choose_node(request.resources, request.strategy, nodes)
            if where in (LOCAL, INFEASIBLE, "error") or not fits(request.resources, nodes[where].available):
                continue
            moves.append((request, where, self.charge(request, where)))
        return moves

    def update(self, msg) -> list:
        """Take in the head's CLUSTER_VIEW; returns ``[(node id, address)]`` of the nodes that died since."""
        # The head sends the removals we have not seen, or all it remembers ("removed_full").
        if msg.removed_full:
            self.removed_groups = EndedCache(self.removed_groups.capacity)
        for pg_hex in msg.removed_groups:
            self.removed_groups.add(pg_hex)
        died = []
        for entry in msg.nodes:
            if entry.node_id == self.node_id:
                continue
            old = self.nodes.get(entry.node_id)
            if old is not None and old.alive and not entry.alive:
                died.append((entry.node_id, entry.address))
            self.nodes[entry.node_id] = NodeView(
                entry.node_id, to_fixed(entry.total), to_fixed(entry.available), entry.alive, entry.address
            )
        listed = {entry.node_id for entry in msg.nodes}
        for node_id in [n for n, view in self.nodes.items() if not view.alive and n not in listed]:
            del self.nodes[node_id]  # dead, and forgotten by the head (its cap on dead nodes)
        return died

    def node_alive(self, node_id: bytes) -> bool:
        """False only for a node known to be dead (one never heard of may not be in the view yet)."""
        node = self.nodes.get(node_id)
        return node is None or node.alive
