"""Reference counting for one process, as a plain state machine.

Events in: an ObjectRef is created or dropped here, a borrower registers or leaves, an owned
object's value arrives, a task returns refs inside its value. Actions out, for
:class:`~ember.runtime.client.ownership.Ownership` to carry out:

- ``("free", oid)``: an object we own is needed by nobody: drop its value everywhere;
- ``("borrow", oid, owner)``: tell ``owner`` we hold a ref to its object;
- ``("defer_borrow", oid)``: the same, but at the end of the running task (see below);
- ``("unborrow", oid, owner)``: we hold no ref to a foreign object any more (``owner`` is None when
  we never registered, so only our cached copy goes).

An owned object is kept while any of these holds: ObjectRefs in this process, borrowers elsewhere,
refs we returned inside a task's value that the caller has not yet registered for, or its value is
still pending (the task that makes it runs; it is freed when the value arrives). Refs contained in
an object's value count as local refs for as long as that object is kept.

A worker that first receives a foreign ref while running a task defers its registration to the end
of the task, and makes it before it replies, so the owner (whose own hold ends with that reply) is
never left thinking nobody holds the object.
"""

from dataclasses import dataclass, field


@dataclass
class Owned:
    ready: bool = False
    borrowers: set = field(default_factory=set)
    contained: list = field(default_factory=list)  # (oid, owner) pairs inside the value
    escaped: dict = field(default_factory=dict)  # caller address -> refs returned to it, unregistered


class ReferenceTable:
    def __init__(self):
        self.address: str | None = None  # this process's address: refs owned by it are ours
        self.local: dict[bytes, int] = {}
        self.owned: dict[bytes, Owned] = {}
        self.owners: dict[bytes, str] = {}  # foreign object id -> its owner, while we hold refs
        self.registered: set = set()  # foreign objects whose owner knows we borrow them

    # --- ObjectRefs in this process ---------------------------------------------------------------
    def add_local(self, oid: bytes, owner: str, in_task: bool = False) -> list:
        count = self.local.get(oid, 0)
        self.local[oid] = count + 1
        if count or oid in self.owned or owner == self.address:
            return []
        self.owners[oid] = owner
        if oid in self.registered:
            return []
        if in_task:
            return [("defer_borrow", oid)]
        self.registered.add(oid)
        return [("borrow", oid, owner)]

    def remove_local(self, oid: bytes) -> list:
        count = self.local.get(oid, 0) - 1
        if count > 0:
            self.local[oid] = count
            return []
        self.local.pop(oid, None)
        if oid in self.owned:
            return self._maybe_free(oid)
        owner = self.owners.pop(oid, None)
        if oid in self.registered:
            self.registered.discard(oid)
            return [("unborrow", oid, owner)]
        return [("unborrow", oid, None)]

    def take_deferred(self, oids: list) -> list:
        """At the end of a task: the (oid, owner) pairs to register now, of those still held."""
        pairs = []
        for oid in oids:
            if self.local.get(oid) and oid not in self.registered and oid in self.owners:
                self.registered.add(oid)
                pairs.append((oid, self.owners[oid]))
        return pairs

    # --- objects we own -----------------------------------------------------------------------------
    def own(self, oid: bytes, ready: bool, contained=()) -> list:
        """A new owned object: a put (ready) or a task's pending return."""
        self.owned[oid] = Owned(ready=ready)
        return self._hold_contained(oid, contained)

    def ready(self, oid: bytes, contained=()) -> list:
        """An owned object's value arrived from a task, with the refs inside it."""
        entry = self.owned.get(oid)
        if entry is None or entry.ready:
            return []
        entry.ready = True
        return self._hold_contained(oid, contained, from_task=True) + self._maybe_free(oid)

    def _hold_contained(self, oid: bytes, contained, from_task: bool = False) -> list:
        actions = []
        for inner, owner in contained:
            self.owned[oid].contained.append((inner, owner))
            added = self.add_local(inner, owner)
            if from_task and owner != self.address and not added:
                # The worker that returned it holds it until we say we borrow it, even if we
                # already did (it may be the second time it returns the same ref to us).
                self.registered.add(inner)
                added = [("borrow", inner, owner)]
            actions += added
        return actions

    def add_borrower(self, oid: bytes, borrower: str) -> list:
        entry = self.owned.get(oid)
        if entry is not None:
            entry.borrowers.add(borrower)
            entry.escaped.pop(borrower, None)  # the caller we returned it to holds it now
        return []

    def remove_borrower(self, oid: bytes, borrower: str) -> list:
        entry = self.owned.get(oid)
        if entry is None:
            return []
        entry.borrowers.discard(borrower)
        return self._maybe_free(oid)

    def borrowers_matching(self, suffix: str) -> set:
        """Every borrower address that ends with ``suffix`` (the processes of one node)."""
        found = set()
        for entry in self.owned.values():
            found |= {b for b in [*entry.borrowers, *entry.escaped] if b.endswith(suffix)}
        return found

    def borrower_died(self, borrower: str) -> list:
        """A process that borrowed (or was being returned) our objects died: it holds nothing now."""
        actions = []
        for oid, entry in list(self.owned.items()):
            if borrower in entry.borrowers or borrower in entry.escaped:
                entry.borrowers.discard(borrower)
                entry.escaped.pop(borrower, None)
                actions += self._maybe_free(oid)
        return actions

    def returned_inside_value(self, oid: bytes, owner: str, caller: str) -> list:
        """A task of ours returns this ref inside its value to ``caller``."""
        entry = self.owned.get(oid)
        if entry is not None:
            entry.escaped[caller] = entry.escaped.get(caller, 0) + 1
            return []
        # A ref we only borrow: keep holding it ourselves (see docs/architecture.md, known gaps).
        return self.add_local(oid, owner)

    def forget(self, oid: bytes) -> list:
        """``free()``: drop an owned object now, whatever still refers to it."""
        entry = self.owned.pop(oid, None)
        if entry is None:
            return []
        return [("free", oid)] + self._release_contained(entry)

    def _maybe_free(self, oid: bytes) -> list:
        entry = self.owned[oid]
        if not entry.ready or self.local.get(oid) or entry.borrowers or entry.escaped:
            return []
        del self.owned[oid]
        return [("free", oid)] + self._release_contained(entry)

    def _release_contained(self, entry: Owned) -> list:
        actions = []
        for inner, _ in entry.contained:
            actions += self.remove_local(inner)
        return actions

    def holds_anything(self) -> bool:
        """Whether this process owns an object someone may still read."""
        return bool(self.owned)
