"""The head's placement-group table as a plain state machine: events in, actions out.

Events: ``create``, ``nodes_changed`` (the head's view of the nodes), ``prepared`` (a node manager's
answer to a prepare), ``remove``, ``node_died``, ``wait``, ``job_finished``. Actions, carried out by
the head (:mod:`ember.runtime.head.head`)::

    ("prepare", node_id, pg_id, [[index, resources], ...])   reserve these bundles (phase 1)
    ("commit", node_id, pg_id, [index, ...])                  make them usable (phase 2)
    ("cancel", node_id, pg_id, [index, ...])                  give them back
    ("reply", waiter, state)                                  answer a wait: CREATED, REMOVED, or None (unknown)
    ("infeasible", requester, pg_id, bundles)                 no set of nodes could ever hold the group

Bundles are reserved with two-phase commit, as in Ray: every chosen node prepares its bundles;
only when all said yes are they committed, so a group is never half usable. If a node says no
(the head's view was stale), the prepared ones are cancelled and the group waits for the next
change in the nodes. A dead node's bundles go back to pending and are placed again elsewhere.

States (Ray's names): PENDING, PREPARING, CREATED, RESCHEDULING, REMOVED.
"""

import collections
import time
from dataclasses import dataclass, field

from ember.runtime.bounded import REMOVED_PLACEMENT_GROUPS, cap_from_env
from ember.runtime.head.placement import STRATEGIES, NodeView, _take, feasible_ever, place_bundles

PENDING, PREPARING, CREATED, RESCHEDULING, REMOVED = "PENDING", "PREPARING", "CREATED", "RESCHEDULING", "REMOVED"


def check_bundles(bundles, strategy) -> None:
    """Raise ValueError (or TypeError) unless these are bundles and a strategy Ray would accept."""
    if strategy not in STRATEGIES:
        raise ValueError(f"Invalid placement group strategy {strategy!r}. Supported strategies are: {STRATEGIES}.")
    if not isinstance(bundles, (list, tuple)) or not bundles:
        raise ValueError(f"The placement group `bundles` argument must be a non-empty list, got {bundles!r}.")
    for bundle in bundles:
        if not isinstance(bundle, dict) or not bundle:
            raise ValueError(
                f"Bundles must be a non-empty dict of resource name to amount, got {bundle!r}: "
                "a placement group bundle cannot be empty."
            )
        for name, amount in bundle.items():
            if not isinstance(name, str):
                raise TypeError(f"Bundle resource names must be strings, got {name!r}.")
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
                raise ValueError(f"Bundle resource amounts must be non-negative numbers, got {name}={amount!r}.")
        if all(amount == 0 for amount in bundle.values()):
            raise ValueError(f"Bundle {bundle!r} asks for nothing: every amount is zero.")


@dataclass
class Group:
    pg_id: bytes
    bundles: list
    strategy: str
    name: str
    namespace: str | None
    job_id: bytes | None
    detached: bool
    requester: object
    soft_target: bytes | None = None  # a node to prefer (Ray's _soft_target_node_id)
    state: str = PENDING
    nodes: list = field(default_factory=list)  # per bundle: the node it is committed on, or None
    attempt: dict = field(default_factory=dict)  # node id -> indexes being prepared there
    answers: dict = field(default_factory=dict)  # node id -> whether it prepared them
    waiters: list = field(default_factory=list)
    warned: bool = False
    rescheduling: bool = False  # lost bundles of a created group: back to RESCHEDULING on failure
    attempts: int = 0
    created_at: float = 0.0
    done_at: float | None = None

    def missing(self) -> list:
        return [i for i, node_id in enumerate(self.nodes) if node_id is None]


class PlacementGroupManager:
    """Placement groups of one cluster: where their bundles are and which state they are in."""

    def __init__(self, clock=time.monotonic, removed_cap: int | None = None):
        self.clock = clock
        self.groups: dict[bytes, Group] = {}  # in creation order: older groups are placed first
        # Removed groups are remembered (for lookups and for failing work that needs them) up to
        # a cap, oldest forgotten first; each removal gets a version so that node managers are sent
        # only the removals they have not seen (see removals_since).
        self.removed_cap = cap_from_env(REMOVED_PLACEMENT_GROUPS) if removed_cap is None else removed_cap
        if self.removed_cap < 1:
            raise ValueError(f"removed_cap must be at least 1, got {self.removed_cap}.")
        self.removals: collections.OrderedDict = collections.OrderedDict()  # pg_id -> version, oldest first
        self.removal_version = 0
        self.names: dict[tuple, bytes] = {}  # (namespace, name) -> id of a group not removed
        self.views: dict[bytes, NodeView] = {}
        self.needs_retry = False  # a prepare failed: try again on the next report, changed or not

    # --- events -------------------------------------------------------------------------------
    def create(
        self,
        pg_id,
        bundles,
        strategy,
        name="",
        namespace=None,
        job_id=None,
        detached=False,
        requester=None,
        soft_target=None,
    ):
        """A new group; raises ValueError for a bad request or a name already taken in the namespace."""
        check_bundles(bundles, strategy)
        if pg_id in self.groups:
            raise ValueError(f"A placement group with id {pg_id.hex()} already exists.")
        if name and (namespace, name) in self.names:
            raise ValueError(f"A placement group named {name!r} already exists in namespace {namespace!r}.")
        bundles = [{k: float(v) for k, v in b.items() if v} for b in bundles]
        group = Group(pg_id, bundles, strategy, name, namespace, job_id, detached, requester, soft_target)
        group.nodes = [None] * len(bundles)
        group.created_at = self.clock()
        self.groups[pg_id] = group
        if name:
            self.names[(namespace, name)] = pg_id
        return self._try_place(group)

    def nodes_changed(self, views: list) -> list:
        """The head's view of the nodes changed: try the groups that wait, oldest first."""
        self.views = {v.node_id: NodeView(v.node_id, dict(v.total), dict(v.available), v.alive) for v in views}
        self.needs_retry = False
        # A report may predate prepares still in flight: count those as taken until they are answered.
        for group in self.groups.values():
            if group.state == PREPARING:
                for node_id, indexes in group.attempt.items():
                    view = self.views.get(node_id)
                    if view is not None and node_id not in group.answers:
                        for i in indexes:
                            _take(view.available, group.bundles[i])
        actions = []
        for group in list(self.groups.values()):
            if group.state in (PENDING, RESCHEDULING):
                actions += self._try_place(group)
        return actions

    def prepared(self, pg_id: bytes, node_id: bytes, ok: bool) -> list:
        """A node answered a prepare."""
        group = self.groups.get(pg_id)
        if group is None or group.state != PREPARING or node_id not in group.attempt or node_id in group.answers:
            return []  # a late answer for an attempt given up (its cancel is already on the way)
        group.answers[node_id] = bool(ok)
        return self._finish_attempt(group)

    def remove(self, pg_id: bytes) -> list:
        """``remove_placement_group``: give every bundle back; waiters hear REMOVED."""
        group = self.groups.get(pg_id)
        if group is None:
            raise ValueError(f"Placement group {pg_id.hex()} does not exist.")
        if group.state == REMOVED:
            return []
        actions = []
        holding: dict = {}
        for i, node_id in enumerate(group.nodes):
            if node_id is not None:
                holding.setdefault(node_id, []).append(i)
        for node_id, indexes in group.attempt.items():
            if group.answers.get(node_id, True):  # unanswered ones too: the cancel follows the prepare
                holding.setdefault(node_id, []).extend(indexes)
        for node_id, indexes in holding.items():
            if self._alive(node_id):
                actions.append(("cancel", node_id, pg_id, sorted(set(indexes))))
                self._give_back(group, node_id, set(indexes))
        group.state = REMOVED
        group.done_at = group.done_at or self.clock()
        group.attempt, group.answers = {}, {}
        group.nodes = [None] * len(group.bundles)
        if group.name and self.names.get((group.namespace, group.name)) == pg_id:
            del self.names[(group.namespace, group.name)]
        actions += [("reply", waiter, REMOVED) for waiter in group.waiters]
        group.waiters = []
        self._remember_removal(pg_id)
        return actions

    def _remember_removal(self, pg_id: bytes) -> None:
        self.removal_version += 1
        self.removals[pg_id] = self.removal_version
        while len(self.removals) > self.removed_cap:
            evicted, _ = self.removals.popitem(last=False)
            self.groups.pop(evicted, None)

    def node_died(self, node_id: bytes) -> list:
        """A node is gone: its bundles go back to pending and are placed elsewhere (as Ray does)."""
        view = self.views.get(node_id)
        if view is not None:
            view.alive = False
        actions = []
        for group in list(self.groups.values()):
            if group.state == REMOVED:
                continue
            lost = False
            for i, holder in enumerate(group.nodes):
                if holder == node_id:
                    group.nodes[i] = None
                    lost = True
            if group.state == PREPARING and node_id in group.attempt:
                group.answers[node_id] = False
                actions += self._finish_attempt(group)
            elif lost and group.state == CREATED:
                group.state = RESCHEDULING
                group.rescheduling = True
                actions += self._try_place(group)
            elif lost and group.state == PREPARING:
                group.rescheduling = True  # placed again once the attempt in flight ends
        return actions

    def wait(self, pg_id: bytes, waiter) -> list:
        """Answer ``waiter`` once the group is created or removed (at once if it already is)."""
        group = self.groups.get(pg_id)
        if group is None:
            return [("reply", waiter, None)]
        if group.state in (CREATED, REMOVED):
            return [("reply", waiter, group.state)]
        group.waiters.append(waiter)
        return []

    def job_finished(self, job_id: bytes) -> list:
        """A job ended: its groups go too, unless created with ``lifetime="detached"`` (as in Ray)."""
        actions = []
        for group in list(self.groups.values()):
            if group.job_id == job_id and not group.detached and group.state != REMOVED:
                actions += self.remove(group.pg_id)
        return actions

    # --- queries ------------------------------------------------------------------------------
    def lookup(self, name: str, namespace) -> bytes | None:
        return self.names.get((namespace, name))

    def pending_bundles(self) -> list:
        """The bundles waiting for room (the autoscaler's placement-group demand)."""
        return [
            dict(group.bundles[i])
            for group in self.groups.values()
            if group.state in (PENDING, RESCHEDULING)
            for i in group.missing()
        ]

    def removed_ids(self) -> list:
        """Hex ids of the removed groups still remembered (the work that asks for their bundles must fail)."""
        return [pg_id.hex() for pg_id in self.removals]

    def removals_since(self, version: int) -> tuple:
        """What a node manager that has seen removals up to ``version`` must learn: (hex ids, full).

        ``full`` means the ids are every removal still remembered and replace what it knows: it is
        new (version 0), or behind by more than we remember. Otherwise they are only the newer ones.
        """
        if version >= self.removal_version:
            return [], False
        oldest = next(iter(self.removals.values()), self.removal_version + 1)
        if version == 0 or version < oldest - 1:
            return self.removed_ids(), True
        newer = []
        for pg_id in reversed(self.removals):  # newest first: stop at the first one it has seen
            if self.removals[pg_id] <= version:
                break
            newer.append(pg_id.hex())
        return newer[::-1], False

    def table(self, pg_id: bytes | None = None):
        """Ray's ``placement_group_table()``: one group's entry, or {id hex: entry} for all."""
        if pg_id is not None:
            group = self.groups.get(pg_id)
            return None if group is None else self._entry(group)
        return {group.pg_id.hex(): self._entry(group) for group in self.groups.values()}

    def _entry(self, group: Group) -> dict:
        if group.state == REMOVED:
            scheduling = "REMOVED"
        elif group.state == CREATED:
            scheduling = "FINISHED"
        elif group.warned:
            scheduling = "INFEASIBLE"
        else:
            scheduling = "SCHEDULING" if group.state == PREPARING else "QUEUED"
        end = group.done_at if group.done_at is not None and group.state in (CREATED, REMOVED) else None
        return {
            "placement_group_id": group.pg_id.hex(),
            "name": group.name,
            "bundles": {i: dict(bundle) for i, bundle in enumerate(group.bundles)},
            "bundles_to_node_id": {i: node_id.hex() for i, node_id in enumerate(group.nodes) if node_id is not None},
            "strategy": group.strategy,
            "state": group.state,
            "stats": {
                "end_to_end_creation_latency_ms": None if end is None else (end - group.created_at) * 1000,
                "scheduling_attempt": group.attempts,
                "scheduling_state": scheduling,
            },
        }

    # --- policy -------------------------------------------------------------------------------
    def _alive(self, node_id: bytes) -> bool:
        view = self.views.get(node_id)
        return view is not None and view.alive

    def _try_place(self, group: Group) -> list:
        missing = group.missing()
        if not missing:
            return []
        wanted = [group.bundles[i] for i in missing]
        occupied = [node_id for node_id in group.nodes if node_id is not None]
        # The preferred node first: the policies try nodes in order.
        views = sorted(self.views.values(), key=lambda view: view.node_id != group.soft_target)
        chosen = place_bundles(wanted, group.strategy, views, occupied)
        if chosen is None:
            if not group.warned and not feasible_ever(wanted, group.strategy, views, occupied):
                group.warned = True
                return [("infeasible", group.requester, group.pg_id, wanted)]
            return []
        group.warned = False
        group.state = PREPARING
        group.attempts += 1
        group.attempt, group.answers = {}, {}
        for i, node_id in zip(missing, chosen):
            group.attempt.setdefault(node_id, []).append(i)
            # Later groups in this round must not count on what this one takes.
            _take(self.views[node_id].available, group.bundles[i])
        return [
            ("prepare", node_id, group.pg_id, [[i, dict(group.bundles[i])] for i in indexes])
            for node_id, indexes in group.attempt.items()
        ]

    def _give_back(self, group: Group, node_id: bytes, indexes) -> None:
        """Bundles a node no longer holds are free again in our view of it. Reports only come when
        a node's availability changed since its last one, so a group made and removed between
        two reports would otherwise leave its resources taken in our view for good."""
        view = self.views.get(node_id)
        if view is not None:
            for i in indexes:
                for name, amount in group.bundles[i].items():
                    view.available[name] = view.available.get(name, 0) + amount

    def _finish_attempt(self, group: Group) -> list:
        if len(group.answers) < len(group.attempt):
            return []
        attempt, answers = group.attempt, group.answers
        group.attempt, group.answers = {}, {}
        live = [node_id for node_id in attempt if self._alive(node_id)]
        if all(answers.values()):
            for node_id, indexes in attempt.items():
                for i in indexes:
                    group.nodes[i] = node_id
            actions = [("commit", node_id, group.pg_id, attempt[node_id]) for node_id in live]
            if group.missing():  # a node died meanwhile, holding bundles committed before
                group.state = RESCHEDULING
                return actions + self._try_place(group)
            group.state = CREATED
            group.rescheduling = False
            group.done_at = group.done_at or self.clock()
            actions += [("reply", waiter, CREATED) for waiter in group.waiters]
            group.waiters = []
            return actions
        # Someone said no: nothing of this attempt may stay reserved.
        actions = [("cancel", node_id, group.pg_id, attempt[node_id]) for node_id in live if answers[node_id]]
        for node_id in live:
            self._give_back(group, node_id, attempt[node_id])
        group.state = RESCHEDULING if group.rescheduling else PENDING
        self.needs_retry = True
        # A node that died is no reason to wait: the others may take its bundles now.
        if any(not self._alive(node_id) for node_id in attempt):
            actions += self._try_place(group)
        return actions
