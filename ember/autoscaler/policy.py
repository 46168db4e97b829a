"""The autoscaler's decisions as a plain state machine: node views in, launch/terminate out.

Ray's demand-based rule (not utilisation):

- queued lease requests (each node's ``demand``) and pending placement-group bundles are
  bin-packed onto the nodes' *available* resources, counting nodes still launching as empty;
- bundles from ``request_resources`` are bin-packed onto the nodes' *total* resources (a standing
  request that the cluster be able to hold them at once, whether or not they are in use);
- what does not fit decides how many worker nodes to launch: it is bin-packed into new nodes of
  the worker shape, up to ``max_workers`` launched nodes;
- what fits neither any node nor the worker shape is infeasible: reported, never launched for;
- a launched node with nothing leased (available == total, no queued demand) for
  ``idle_timeout_s`` is terminated, unless the requested bundles need it. The head's node and
  nodes the autoscaler did not launch are never terminated.

Nothing here touches a socket or a process, so the policy is tested directly.
"""

from dataclasses import dataclass

# How long a launched node may take to appear in the head's node table before it counts as failed.
LAUNCH_TIMEOUT_S = 60.0
_EPSILON = 1e-6


@dataclass
class LaunchedNode:
    node_id: str
    launched_at: float
    joined: bool = False
    idle_since: float | None = None


def fits(request: dict, capacity: dict) -> bool:
    """Whether ``capacity`` holds every resource ``request`` asks for."""
    return all(amount <= capacity.get(name, 0.0) + _EPSILON for name, amount in request.items() if amount > 0)


def _take(request: dict, capacity: dict) -> None:
    for name, amount in request.items():
        if amount > 0:
            capacity[name] = capacity.get(name, 0.0) - amount


def _size(request: dict) -> tuple:
    # Place the biggest requests first (first-fit decreasing): GPUs are scarcest, then CPUs.
    return (request.get("GPU", 0.0), request.get("CPU", 0.0), sum(request.values()))


def bin_pack(requests: list, capacities: list) -> list:
    """First-fit decreasing: place each request on the first capacity that holds it, taking from it
    (``capacities`` are changed in place). Returns the requests that fit nowhere."""
    unfit = []
    for request in sorted(requests, key=_size, reverse=True):
        for capacity in capacities:
            if fits(request, capacity):
                _take(request, capacity)
                break
        else:
            unfit.append(request)
    return unfit


def is_idle(node: dict) -> bool:
    """A node with nothing leased: every resource available, no lease request queued."""
    if node.get("demand"):
        return False
    total, available = node.get("resources", {}), node.get("available", {})
    return all(available.get(name, 0.0) >= amount - _EPSILON for name, amount in total.items())


def _totals(nodes: list) -> list:
    return [dict(n.get("resources", {})) for n in nodes]


def _clean(request: dict) -> dict:
    return {str(name): float(amount) for name, amount in request.items() if amount and float(amount) > 0}


class AutoscalerPolicy:
    """Decides, each round, which worker nodes to launch and which to terminate.

    ``worker_shape`` is the resources of one worker node (e.g. ``{"CPU": 2}``); ``max_workers`` caps
    how many the autoscaler runs at once (Ray's ``max_workers``); ``idle_timeout_s`` is how long a
    launched node stays idle before it is terminated.
    """

    def __init__(self, worker_shape: dict, max_workers: int, idle_timeout_s: float):
        if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 0:
            raise ValueError(f"max_workers must be a non-negative integer, got {max_workers!r}.")
        if not isinstance(idle_timeout_s, (int, float)) or idle_timeout_s < 0:
            raise ValueError(f"idle_timeout_s must be a non-negative number of seconds, got {idle_timeout_s!r}.")
        shape = _clean(worker_shape)
        if not shape:
            raise ValueError(f"worker_shape must name at least one positive resource, got {worker_shape!r}.")
        self.worker_shape = shape
        self.max_workers = max_workers
        self.idle_timeout_s = float(idle_timeout_s)
        self.launched: dict[str, LaunchedNode] = {}
        self.infeasible: list = []  # the last round's demand that no node and no worker shape can hold

    # --- events from the monitor ----------------------------------------------------------------
    def node_launched(self, node_id: str, now: float) -> None:
        """A node this autoscaler started has printed its id (it may not have joined the head yet)."""
        self.launched[node_id] = LaunchedNode(node_id, now)

    def node_gone(self, node_id: str) -> None:
        """A launched node's process exited (terminated by us, or on its own)."""
        self.launched.pop(node_id, None)

    # --- one round ------------------------------------------------------------------------------
    def update(self, now: float, nodes: list, requested: list = (), pending_bundles: list = ()) -> list:
        """Run one round. ``nodes``: the head's node views (node_id as hex, alive, resources,
        available, demand); ``requested``: the bundles of ``request_resources``; ``pending_bundles``:
        placement-group bundles waiting for room. Returns actions: ``("launch", shape)`` per node to
        start and ``("terminate", node_id)`` per launched node to stop."""
        views = {n["node_id"]: n for n in nodes}
        live = [n for n in nodes if n.get("alive")]
        actions = []

        # Launched nodes that died, or never joined, are cleaned up and no longer count.
        for launched in list(self.launched.values()):
            view = views.get(launched.node_id)
            if view is not None:
                launched.joined = True
            if (view is not None and not view.get("alive")) or (
                view is None and (launched.joined or now - launched.launched_at > LAUNCH_TIMEOUT_S)
            ):
                actions.append(("terminate", launched.node_id))
                del self.launched[launched.node_id]
        starting = [n for n in self.launched.values() if n.node_id not in views]

        demand = [_clean(r) for n in live for r in n.get("demand") or []]
        demand += [_clean(b) for b in pending_bundles or []]
        requested = [_clean(b) for b in requested or []]
        demand = [r for r in demand if r]
        requested = [r for r in requested if r]

        # Requests that fit no node as it is built, and no worker node, can never be met.
        totals = [dict(n.get("resources", {})) for n in live]
        feasible = lambda r: fits(r, self.worker_shape) or any(fits(r, t) for t in totals)  # noqa: E731
        self.infeasible = [r for r in demand + requested if not feasible(r)]

        available = [dict(n.get("available", {})) for n in live] + [dict(self.worker_shape) for _ in starting]
        unmet = bin_pack([r for r in demand if feasible(r)], available)
        total_capacity = totals + [dict(self.worker_shape) for _ in starting]
        unmet += bin_pack([r for r in requested if feasible(r)], total_capacity)

        # Only what a worker node could hold is launched for; the rest waits for existing nodes.
        to_launch = self._nodes_needed([r for r in unmet if fits(r, self.worker_shape)])
        room = max(0, self.max_workers - len(self.launched))
        for _ in range(min(to_launch, room)):
            actions.append(("launch", dict(self.worker_shape)))

        if to_launch == 0:
            actions += self._idle_terminations(now, live, [r for r in requested if feasible(r)])
        else:
            for launched in self.launched.values():
                launched.idle_since = None  # demand is waiting: no node is idle in a useful sense
        return actions

    def _nodes_needed(self, requests: list) -> int:
        """How many new worker nodes hold ``requests`` (first-fit decreasing into fresh nodes)."""
        bins: list = []
        for request in sorted(requests, key=_size, reverse=True):
            for capacity in bins:
                if fits(request, capacity):
                    _take(request, capacity)
                    break
            else:
                capacity = dict(self.worker_shape)
                _take(request, capacity)
                bins.append(capacity)
        return len(bins)

    def _idle_terminations(self, now: float, live: list, requested: list) -> list:
        views = {n["node_id"]: n for n in live}
        actions = []
        remaining = {n["node_id"]: n for n in live}
        for launched in sorted(self.launched.values(), key=lambda n: n.launched_at):
            view = views.get(launched.node_id)
            if view is None or not is_idle(view):
                launched.idle_since = None
                continue
            if launched.idle_since is None:
                launched.idle_since = now
            if now - launched.idle_since < self.idle_timeout_s:
                continue
            # request_resources() is a standing request: keep a node it needs even when idle.
            others = [n for i, n in remaining.items() if i != launched.node_id]
            if requested and len(bin_pack(requested, _totals(others))) > len(
                bin_pack(requested, _totals(others + [view]))
            ):
                continue
            actions.append(("terminate", launched.node_id))
            del self.launched[launched.node_id]
            del remaining[launched.node_id]
        return actions
