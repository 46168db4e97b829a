"""A layered (Sugiyama-style) layout for the task graph: a plain function, no drawing.

``layered_layout(keys, edges)`` places each node in a layer (its longest path from a source, so every
edge goes to a deeper layer and a chain of n calls is n layers) and at a slot inside its layer; a
few barycentre sweeps order each layer by where its neighbours sit, which removes most crossings.
A layer however wide stays one layer: its slots are spread along the other axis, centred on 0.
Edges that close a cycle (possible between collapsed functions: f calls g calls f) and a node's
edges to itself are left out of the layering and drawn as they fall.
"""

from dataclasses import dataclass

SWEEPS = 4  # down-and-up barycentre passes; crossings rarely improve after a few


@dataclass
class Placement:
    layer: int  # 0 for a source; 1 + the deepest predecessor otherwise
    slot: float  # position inside the layer, centred on 0, one apart


def layered_layout(keys, edges, sweeps: int = SWEEPS) -> dict:
    """Place ``keys`` (hashable, in a stable order) given ``edges`` ``(source, target)``.

    Returns ``{key: Placement}``. Edges naming a key not in ``keys`` are ignored.
    """
    if sweeps < 0:
        raise ValueError(f"sweeps must be >= 0, got {sweeps}")
    keys = list(dict.fromkeys(keys))
    known = set(keys)
    successors: dict = {key: [] for key in keys}
    for source, target in edges:
        if source != target and source in known and target in known and target not in successors[source]:
            successors[source].append(target)
    forward = _without_back_edges(keys, successors)
    layer = _longest_path_layers(keys, forward)
    predecessors: dict = {key: [] for key in keys}
    for source, targets in forward.items():
        for target in targets:
            predecessors[target].append(source)
    layers: dict = {}
    for key in keys:
        layers.setdefault(layer[key], []).append(key)
    order = [layers[index] for index in sorted(layers)]
    _reduce_crossings(order, predecessors, forward, sweeps)
    placements = {}
    for depth, members in enumerate(order):
        middle = (len(members) - 1) / 2
        for index, key in enumerate(members):
            placements[key] = Placement(depth, index - middle)
    return placements


def _without_back_edges(keys: list, successors: dict) -> dict:
    """The edges minus those that close a cycle (found by an iterative depth-first search)."""
    forward = {key: [] for key in keys}
    state: dict = {}  # key -> 1 while on the search's stack, 2 once done
    for root in keys:
        if root in state:
            continue
        state[root] = 1
        stack = [(root, iter(successors[root]))]
        while stack:
            key, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[key] = 2
                stack.pop()
                continue
            seen = state.get(child)
            if seen == 1:  # back to a node on the stack: this edge closes a cycle
                continue
            forward[key].append(child)
            if seen is None:
                state[child] = 1
                stack.append((child, iter(successors[child])))
    return forward


def _longest_path_layers(keys: list, forward: dict) -> dict:
    incoming = dict.fromkeys(keys, 0)
    for targets in forward.values():
        for target in targets:
            incoming[target] += 1
    layer = dict.fromkeys(keys, 0)
    ready = [key for key in keys if incoming[key] == 0]
    while ready:
        key = ready.pop()
        for target in forward[key]:
            layer[target] = max(layer[target], layer[key] + 1)
            incoming[target] -= 1
            if incoming[target] == 0:
                ready.append(target)
    return layer


def _reduce_crossings(order: list, predecessors: dict, successors: dict, sweeps: int) -> None:
    """Barycentre ordering: each layer sorted by the mean slot of its neighbours on the side just
    fixed, alternately sweeping towards deeper and shallower layers. Slots are centred per layer so
    that neighbours several layers away (long edges) compare fairly."""
    slot: dict = {}

    def place(members: list) -> None:
        middle = (len(members) - 1) / 2
        for index, key in enumerate(members):
            slot[key] = index - middle

    for members in order:
        place(members)
    for _ in range(sweeps):
        for depth in range(1, len(order)):
            order[depth] = _by_barycentre(order[depth], predecessors, slot)
            place(order[depth])
        for depth in range(len(order) - 2, -1, -1):
            order[depth] = _by_barycentre(order[depth], successors, slot)
            place(order[depth])


def _by_barycentre(members: list, neighbours: dict, slot: dict) -> list:
    def key(item):
        index, member = item
        near = neighbours[member]
        # A node with no neighbour on that side keeps its place rather than drifting to the middle.
        centre = sum(slot[n] for n in near) / len(near) if near else slot[member]
        return (centre, index)

    return [member for _, member in sorted(enumerate(members), key=key)]


def crossings(order: list, successors: dict) -> int:
    """How many pairs of edges between adjacent layers cross (for tests and for judging sweeps)."""
    total = 0
    for upper, lower in zip(order, order[1:]):
        position = {key: index for index, key in enumerate(lower)}
        pairs = [
            (i, position[target])
            for i, key in enumerate(upper)
            for target in successors.get(key, ())
            if target in position
        ]
        for a in range(len(pairs)):
            for b in range(a + 1, len(pairs)):
                if (pairs[a][0] - pairs[b][0]) * (pairs[a][1] - pairs[b][1]) < 0:
                    total += 1
    return total
