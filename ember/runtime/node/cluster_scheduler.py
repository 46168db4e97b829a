"""Which node should run a lease request: the cluster-level scheduling policy, as plain functions.

A node manager asks :func:`choose_node` for every lease request it gets. The answer is this node
(queue it here), another node (spill the request back to its owner, naming that node), or a refusal
(infeasible everywhere, or a hard node affinity to a node that cannot run it). The inputs are the
node manager's view of the cluster (what the head last pushed, corrected by what this node
spilled since) and, for its own node, the exact state of its local scheduler.

Policies follow Ray's:

- ``None`` (hybrid, the default): pack onto the local node while its critical resource use stays
  under ``SPREAD_THRESHOLD``; then prefer the least used node that can run the request now; when
  none can, queue where it is feasible (locally first).
- ``"SPREAD"``: round-robin over the nodes that can run it now (over feasible nodes when none can).
- ``{"node": hex id, "soft": bool, "spill": bool}``: node affinity. Soft affinity falls back to the
  hybrid policy when the node is dead or can never run it (``spill``: also when it is busy).
- Placement groups need no policy of their own: a bundle's resources exist only on its node.

Amounts are fixed point (see :mod:`ember.runtime.node.scheduler`).
"""

from dataclasses import dataclass, field

SPREAD_THRESHOLD = 0.5

LOCAL = "local"
INFEASIBLE = "infeasible"


@dataclass
class NodeView:
    """A node as a scheduling policy sees it (this one's, and the placement groups' in ``placement``)."""

    node_id: bytes
    total: dict
    available: dict = field(default_factory=dict)
    alive: bool = True
    address: str = ""


def groups_of(request: dict) -> set:
    """The placement groups (hex ids) whose bundles a request asks for."""
    return {name.rsplit("_", 1)[1] for name in request if name.startswith("bundle_group_")}


def fits(request: dict, resources: dict) -> bool:
    return all(resources.get(name, 0) >= amount for name, amount in request.items())


def utilization(node: NodeView, request: dict) -> float:
    """The node's critical resource use: the highest used share among the resources asked for."""
    shares = [
        1 - node.available.get(name, 0) / node.total[name]
        for name in (request.keys() | {"CPU"})
        if node.total.get(name, 0) > 0
    ]
    return max(shares, default=0.0)


def node_affinity(strategy) -> tuple | None:
    """``(node hex, soft, spill)`` of a NodeAffinitySchedulingStrategy, as a request's ``NodeAffinity``
    part or a plain dict (the head's actors), or None for any other strategy."""
    if isinstance(strategy, dict):
        return (
            (strategy["node"], strategy.get("soft", False), strategy.get("spill", False))
            if "node" in strategy
            else None
        )
    node = getattr(strategy, "node", None)
    if not isinstance(node, str):
        return None
    return node, strategy.soft, strategy.spill


class ClusterPolicy:
    """The node choice for one node manager; it keeps the round-robin position of SPREAD."""

    def __init__(self, local_node_id: bytes):
        self.local_node_id = local_node_id
        self.spread_next = 0

    def choose_node(self, request: dict, strategy, nodes: dict) -> tuple:
        """Returns (LOCAL, None), (node_id, None) to spill to, or (INFEASIBLE | "error", message)."""
        alive = [n for n in nodes.values() if n.alive]
        # The local node first, then a stable order: ties go to the node that keeps data local.
        alive.sort(key=lambda n: (n.node_id != self.local_node_id, n.node_id))
        feasible = [n for n in alive if fits(request, n.total)]
        affinity = node_affinity(strategy)
        if affinity is not None:
            return self._affinity(request, affinity, nodes, feasible)
        if not feasible:
            return INFEASIBLE, None
        available = [n for n in feasible if fits(request, n.available)]
        if strategy == "SPREAD":
            pool = available or feasible
            node = pool[self.spread_next % len(pool)]
            self.spread_next += 1
            return self._answer(node)
        return self._answer(self._hybrid(request, feasible, available))

    def _hybrid(self, request: dict, feasible: list, available: list) -> NodeView:
        if available:
            local = available[0] if available[0].node_id == self.local_node_id else None
            if local is not None and utilization(local, request) < SPREAD_THRESHOLD:
                return local
            return min(available, key=lambda n: utilization(n, request))
        if feasible[0].node_id == self.local_node_id:
            return feasible[0]
        return min(feasible, key=lambda n: utilization(n, request))

    def _affinity(self, request: dict, affinity: tuple, nodes: dict, feasible: list) -> tuple:
        node_hex, soft, spill = affinity
        try:
            target = nodes.get(bytes.fromhex(node_hex))
        except ValueError:
            target = None  # not a node id at all: no such node
        usable = target is not None and target.alive and fits(request, target.total)
        if usable and not (spill and not fits(request, target.available)):
            return self._answer(target)
        if soft:
            if not feasible:
                return INFEASIBLE, None
            available = [n for n in feasible if fits(request, n.available)]
            return self._answer(self._hybrid(request, feasible, available))
        why = "is not alive" if target is None or not target.alive else "does not have the resources it needs"
        return "error", (
            f"The task or actor has a hard NodeAffinitySchedulingStrategy to node {node_hex}, "
            f"which {why}. Use soft=True to let it run elsewhere."
        )

    def _answer(self, node: NodeView) -> tuple:
        return (LOCAL, None) if node.node_id == self.local_node_id else (node.node_id, None)

    @staticmethod
    def charge(node: NodeView, request: dict) -> None:
        """Count a request we sent to ``node`` against its view until the head tells us better, so a
        burst of requests does not all go to the node that looked freest."""
        for name, amount in request.items():
            node.available[name] = node.available.get(name, 0) - amount
