"""Where a placement group's bundles go: a pure policy over the head's view of the nodes.

Ray's four strategies:

- ``PACK``: as few nodes as possible; bundles go to other nodes when one cannot hold them all.
- ``SPREAD``: each bundle on a node of its own where possible; nodes are shared when needed.
- ``STRICT_PACK``: every bundle on one node, or not placed at all.
- ``STRICT_SPREAD``: every bundle on a different node, or not placed at all.

A group is placed whole or not at all (its bundles are reserved atomically), so every function
here answers with one node per bundle or ``None``. ``occupied`` names the nodes that already hold
other bundles of the same group, for re-placing the bundles a dead node lost.
"""

from ember.runtime.node.cluster_scheduler import NodeView

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")

# Amounts come from float arithmetic on both sides (reported availability, requested bundles):
# compare with a tolerance finer than the node manager's fixed point (1/10000).
_EPSILON = 1e-6


def fits(need: dict, free: dict) -> bool:
    return all(free.get(name, 0) + _EPSILON >= amount for name, amount in need.items() if amount > 0)


def _take(free: dict, need: dict) -> None:
    for name, amount in need.items():
        free[name] = free.get(name, 0) - amount


def _sum(bundles: list) -> dict:
    total: dict = {}
    for bundle in bundles:
        for name, amount in bundle.items():
            total[name] = total.get(name, 0) + amount
    return total


def place_bundles(bundles: list, strategy: str, nodes: list, occupied=()) -> list | None:
    """One node id per bundle, honouring ``strategy`` with the nodes' available resources now;
    ``None`` if the group cannot be placed whole at the moment."""
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown placement strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}.")
    live = [n for n in nodes if n.alive]
    free = {n.node_id: dict(n.available) for n in live}
    occupied = [node_id for node_id in occupied if node_id in free]
    if not bundles:
        return []
    if strategy == "STRICT_PACK":
        return _strict_pack(bundles, live, free, occupied)
    if strategy == "STRICT_SPREAD":
        return _strict_spread(bundles, [n for n in live if n.node_id not in occupied], free)
    if strategy == "PACK":
        return _pack(bundles, live, free, occupied)
    # Spreading greedily can strand a big bundle that packing would have fitted: SPREAD is best
    # effort, so a packed placement beats none.
    return _spread(bundles, live, free, occupied) or _pack(bundles, live, free, occupied)


def feasible_ever(bundles: list, strategy: str, nodes: list, occupied=()) -> bool:
    """Whether the group could be placed on these nodes if nothing else used them (their totals):
    a group for which this is False waits for a node to join, and its creator is told."""
    idle = [NodeView(n.node_id, n.total, dict(n.total), n.alive) for n in nodes]
    return place_bundles(bundles, strategy, idle, occupied) is not None


def _strict_pack(bundles, live, free, occupied):
    need = _sum(bundles)
    # Bundles already placed pin the group to their node.
    candidates = [n.node_id for n in live if not occupied or n.node_id in occupied]
    for node_id in candidates:
        if fits(need, free[node_id]):
            return [node_id] * len(bundles)
    return None


def _strict_spread(bundles, live, free):
    """A matching of bundles to distinct nodes (augmenting paths: greedy can miss one that exists
    when bundles differ in shape)."""
    if len(bundles) > len(live):
        return None
    can = [[n.node_id for n in live if fits(bundle, free[n.node_id])] for bundle in bundles]
    holder: dict = {}  # node id -> bundle index

    def assign(index: int, seen: set) -> bool:
        for node_id in can[index]:
            if node_id in seen:
                continue
            seen.add(node_id)
            if node_id not in holder or assign(holder[node_id], seen):
                holder[node_id] = index
                return True
        return False

    # Most constrained bundles first keeps the search short.
    for index in sorted(range(len(bundles)), key=lambda i: len(can[i])):
        if not assign(index, set()):
            return None
    result = [None] * len(bundles)
    for node_id, index in holder.items():
        result[index] = node_id
    return result


def _pack(bundles, live, free, occupied):
    # One node for everything if any can take it (the group's own nodes first), as Ray prefers.
    whole = _strict_pack(bundles, live, free, occupied)
    if whole is not None:
        return whole
    used: list = list(occupied)
    free = {node_id: dict(amounts) for node_id, amounts in free.items()}
    result = []
    for bundle in bundles:
        # Nodes the group already uses, then the roomiest: fewest nodes in the end.
        order = used + sorted(
            (n.node_id for n in live if n.node_id not in used),
            key=lambda node_id: -sum(free[node_id].values()),
        )
        node_id = next((node_id for node_id in order if fits(bundle, free[node_id])), None)
        if node_id is None:
            return None
        _take(free[node_id], bundle)
        if node_id not in used:
            used.append(node_id)
        result.append(node_id)
    return result


def _spread(bundles, live, free, occupied):
    count = {n.node_id: 0 for n in live}
    for node_id in occupied:
        count[node_id] += 1
    free = {node_id: dict(amounts) for node_id, amounts in free.items()}  # _pack may retry on the original
    result = []
    for bundle in bundles:
        # The least used node that fits; node order breaks ties, so placement is predictable.
        fitting = [n.node_id for n in live if fits(bundle, free[n.node_id])]
        if not fitting:
            return None
        node_id = min(fitting, key=lambda node_id: count[node_id])
        count[node_id] += 1
        _take(free[node_id], bundle)
        result.append(node_id)
    return result
