"""One actor's life on the head as a plain state machine: events in, actions out.

States (Ray's names)::

    PENDING_CREATION --constructed--> ALIVE --worker_died, restarts left--> RESTARTING --constructed--> ALIVE
           |                            |                                        |
           +----------------------------+--- killed, constructor failed, -------+--> DEAD (final)
                                              out of restarts, owner gone

The machine knows nothing of sockets or tables. The actor directory
(:mod:`ember.runtime.head.actor_directory`) feeds it what happened (a worker was granted, the
constructor ran, the worker died, a kill, the job or the owning actor ended) and carries out the
actions it answers, in order:

    PLACE            ask a node manager for a worker for the actor
    CREATE_INSTANCE  send the constructor to the worker just granted
    KILL_WORKER      stop the actor's worker (or the one just granted, when the actor died meanwhile)
    CANCEL_LEASE     withdraw the request for a worker still in flight
    NOTIFY           tell the subscribers the actor's new state
    DEAD             the actor is dead for good (the action carries the cause): free its name, forget
                     its spec, and end the actors it owns (fate sharing, as in Ray)
"""

PENDING, ALIVE, RESTARTING, DEAD = "PENDING_CREATION", "ALIVE", "RESTARTING", "DEAD"
PLACE, CREATE_INSTANCE, KILL_WORKER = "place", "create_instance", "kill_worker"
CANCEL_LEASE, NOTIFY = "cancel_lease", "notify"
DIED = "dead"

JOB_FINISHED_CAUSE = "the job that created the actor finished"
OWNER_DIED_CAUSE = "The actor that created this actor died."


class ActorLifecycle:
    """The state of one actor, its restarts and whether it holds a worker or waits for one."""

    def __init__(self, max_restarts: int = 0, detached: bool = False):
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < -1:
            raise ValueError(f"max_restarts must be an int >= -1 (-1: without limit), got {max_restarts!r}.")
        self.max_restarts = max_restarts
        self.detached = bool(detached)
        self.state = PENDING
        self.num_restarts = 0
        self.no_restart = False  # set by a kill without restart or a constructor that raised
        self.death_cause = ""
        self.has_worker = False  # a worker was granted and has not died
        self.awaiting_lease = False  # a request for a worker is in flight

    @property
    def dead(self) -> bool:
        return self.state == DEAD

    def wants_worker(self) -> bool:
        """Whether the actor needs a worker and nobody is getting one for it yet."""
        return self.state in (PENDING, RESTARTING) and not self.has_worker and not self.awaiting_lease

    # --- events -------------------------------------------------------------------------------
    def lease_requested(self) -> list:
        if self.state not in (PENDING, RESTARTING):
            raise ValueError(f"an actor in state {self.state} asks for no worker")
        self.awaiting_lease = True
        return []

    def lease_withdrawn(self) -> list:
        """The request for a worker was cancelled (to move it to a better node): place it again."""
        self.awaiting_lease = False
        return [PLACE] if self.state in (PENDING, RESTARTING) and not self.has_worker else []

    def lease_lost(self) -> list:
        """The node asked for a worker died before answering: the request is void."""
        self.awaiting_lease = False
        return []

    def lease_failed(self, cause: str) -> list:
        self.awaiting_lease = False
        return self._die(cause)

    def unplaceable(self, cause: str) -> list:
        """No node can ever run it (a hard node affinity to a node that is not there, say)."""
        return self._die(cause)

    def worker_granted(self) -> list:
        self.awaiting_lease = False
        if self.state == DEAD:  # killed while it waited: the worker is not wanted
            return [KILL_WORKER]
        self.has_worker = True
        return [CREATE_INSTANCE]

    def constructed(self) -> list:
        if self.state == DEAD or not self.has_worker:
            return []
        self.state = ALIVE
        return [NOTIFY]

    def constructor_failed(self, cause: str) -> list:
        if self.state == DEAD:
            return []
        self.no_restart = True
        return [*self._die(cause), KILL_WORKER]

    def worker_died(self, default_cause: str) -> list:
        self.has_worker = False
        if self.state == DEAD:
            return []
        if not self.no_restart and (self.max_restarts == -1 or self.num_restarts < self.max_restarts):
            self.num_restarts += 1
            self.state = RESTARTING
            return [NOTIFY, PLACE]
        return self._die(self.death_cause or default_cause)

    def kill(self, cause: str, no_restart: bool = True) -> list:
        """``ember.kill``, a released handle, or the end of what the actor's life depends on."""
        if self.state == DEAD:
            return []
        self.no_restart = self.no_restart or bool(no_restart)
        self.death_cause = cause
        if self.has_worker:
            # With restarts left, the worker's death (reported by its node) restarts it.
            return [KILL_WORKER, *(self._die(cause) if self.no_restart else [])]
        if self.no_restart:
            return [*([CANCEL_LEASE] if self.awaiting_lease else []), *self._die(cause)]
        return []

    def job_finished(self, outlives_job: bool) -> list:
        """Its job ended: it ends too unless it (or the actor that owns it) is detached."""
        return [] if outlives_job else self.kill(JOB_FINISHED_CAUSE)

    def owner_died(self) -> list:
        """The actor that created it died: it shares that fate unless it is detached."""
        return [] if self.detached else self.kill(OWNER_DIED_CAUSE)

    def _die(self, cause: str) -> list:
        self.state = DEAD
        self.death_cause = cause
        return [(DIED, cause)]


def outlives_job(actor_id: bytes, lookup) -> bool:
    """Whether an actor survives the end of its job: detached actors do, and so do the actors they
    created, transitively (an actor shares the fate of the actor that created it, its owner).

    ``lookup(actor_id)`` answers ``(detached, owner actor id or None, dead)`` or None when unknown.
    """
    seen = set()
    while actor_id is not None and actor_id not in seen:  # an owner cycle is only possible in forged specs
        seen.add(actor_id)
        entry = lookup(actor_id)
        if entry is None:
            return False
        detached, owner, dead = entry
        if dead and len(seen) > 1:
            return False  # an owner up the chain is dead: its fate is shared already
        if detached:
            return True
        actor_id = owner
    return False
