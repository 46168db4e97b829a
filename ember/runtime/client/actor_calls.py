"""Actor creation and actor method calls, the owner's side.

Data flow::

    handle.method.remote() --spec--> per-actor queue (submission order) --actor_call--> the actor's worker
    head --actor_update (ALIVE with an address, RESTARTING, DEAD)--> resend or fail what was in flight
    creator drops its only handle --actor_handle_released--> head (once queued calls have drained)

Owned by the :class:`~ember.runtime.client.task_submitter.TaskSubmitter` (``submitter.actor_calls``):
calls are task specs of the submitter, whose ``new_spec``, ``resolve``, ``record``, ``fail`` and
``should_retry`` they use; ``enqueue``, ``argument_ready`` and ``cancel`` are what it calls here.
"""

import collections
from functools import partial

from ember import exceptions
from ember.runtime import protocol
from ember.runtime.client.task_spec import refused_result
from ember.runtime.messages import ActorPublic

ALIVE, RESTARTING, DEAD = "ALIVE", "RESTARTING", "DEAD"


class ActorState:
    def __init__(self, actor_id):
        self.actor_id = actor_id
        self.state = "PENDING_CREATION"
        self.address = None
        self.client_address = None
        self.node_id = None
        self.pid = None
        self.queue: collections.deque = collections.deque()
        self.inflight: dict = {}
        self.death_cause = ""
        self.subscribed = False
        self.keepalive = None
        self.released = False  # the creator dropped its handle: kill the actor once calls drain


class ActorCalls:
    def __init__(self, submitter):
        self.submitter = submitter
        self.client = submitter.client
        self.actors: dict[bytes, ActorState] = {}  # actor id -> the calls we make to it

    def create_actor(self, actor_id: bytes, class_key: bytes, args, kwargs, spec_fields: dict):
        """Register a new actor with the head; returns the existing actor's info for get_if_exists."""
        spec = self.submitter.new_spec(spec_fields["class_name"], 1, args, kwargs, {"cid": class_key})
        header = dict(spec_fields)
        header.update(spec.header)
        header["refs"] = [[key, "r", ref._id, ref._owner] for key, ref in spec.refs]
        header.pop("op", None)
        state = ActorState(actor_id)
        state.subscribed = True
        state.keepalive = spec.keepalive
        self.client.call_soon(self.actors.setdefault, actor_id, state)
        # Ahead of the creation, so the node has our idle workers back when the actor's lease comes:
        # an actor pool started right after tasks (ember.data's) took a new process 2 times in 3.
        self.client.call_soon(self.submitter.return_idle_leases)
        reply, _ = self.client.request(
            "head",
            {"op": protocol.CREATE_ACTOR, "actor_id": actor_id, "job_id": header["job"], "spec": header},
            spec.frames,
        )
        return reply.existing

    def submit_actor_task(
        self,
        actor_id: bytes,
        method: str,
        args,
        kwargs,
        *,
        num_returns,
        max_task_retries: int,
        name: str,
        retry_exceptions=False,
        concurrency_group=None,
        task_events: bool = True,
    ):
        header = {"op": protocol.ACTOR_CALL, "method": method, "nret": num_returns}
        if concurrency_group is not None:
            header["cgroup"] = concurrency_group
        spec = self.submitter.new_spec(name, num_returns, args, kwargs, header)
        spec.actor = actor_id
        spec.retries_left = max_task_retries
        spec.retry_exceptions = retry_exceptions
        spec.events = task_events
        outputs = self.submitter.outputs(spec)
        self.client.call_soon(self.submitter.submit, spec)
        return outputs

    def enqueue(self, spec) -> None:
        """On the I/O thread: a call submitted (its arguments may still be pending)."""
        state = self.actors.get(spec.actor)
        if state is None:
            state = self.actors[spec.actor] = ActorState(spec.actor)
        if not state.subscribed:
            state.subscribed = True
            self.client.send(
                "head",
                {"op": protocol.SUBSCRIBE_ACTOR, "actor_id": spec.actor},
                callback=self.on_actor_update,
            )
        state.queue.append(spec)
        self._pump_actor(state)

    def argument_ready(self, spec) -> None:
        """On the I/O thread: the last pending argument of a queued call is ready."""
        state = self.actors.get(spec.actor)
        if state is not None:  # else the actor died and its calls failed already
            self._pump_actor(state)

    def cancel(self, spec, error: Exception, recursive: bool) -> None:
        """On the I/O thread: a queued call fails at once; a sent one is cancelled by the actor's worker."""
        state = self.actors.get(spec.actor)
        if state is not None and spec in state.queue:
            state.queue.remove(spec)
            self.submitter.fail(spec, error)
            self._maybe_release(state)
        elif state is not None and state.client_address:
            self.client.send(
                state.client_address, {"op": protocol.CANCEL_TASK, "task_id": spec.task_id, "recursive": recursive}
            )

    def _pump_actor(self, state: ActorState) -> None:
        self._send_actor_calls(state)
        self._maybe_release(state)  # calls that failed before being sent also drain the queue
        if state.state == DEAD and not state.queue and not state.inflight and self.actors.get(state.actor_id) is state:
            # Nothing more will happen to it: a later call through a handle we still hold subscribes
            # again and hears DEAD from the head, so a program that makes many actors stays small.
            del self.actors[state.actor_id]

    def _send_actor_calls(self, state: ActorState) -> None:
        if state.state == DEAD:
            while state.queue:
                spec = state.queue.popleft()
                self.submitter.fail(
                    spec, exceptions.ActorDiedError(state.death_cause or "The actor is dead.", state.actor_id.hex())
                )
            return
        if state.state != ALIVE:
            return
        while state.queue and state.queue[0].pending == 0:
            spec = state.queue.popleft()
            if spec.cancelled:
                continue
            frames, error = self.submitter.resolve(spec, state.node_id)
            if error is not None:
                self.submitter.fail(spec, error)
                continue
            state.inflight[spec.task_id] = spec
            self.client.send(state.address, spec.header, frames)
            if spec.events:
                self.client.task_event("running", spec.task_id, node=state.node_id, pid=state.pid)
            self.client.expect_reply(spec.task_id, partial(self._on_actor_result, state, spec))

    def _on_actor_result(self, state: ActorState, spec, result, frames) -> None:
        state.inflight.pop(spec.task_id, None)
        refused = refused_result(spec, result, frames)
        if refused is not None:
            self.submitter.fail(spec, refused)
            self._maybe_release(state)
            return
        if result.err and self.submitter.should_retry(spec, frames[0]):
            # retry_exceptions: the call goes again, ahead of the calls queued after it.
            spec.retries_left -= 1 if spec.retries_left > 0 else 0
            state.queue.appendleft(spec)
            self._pump_actor(state)
            return
        self.submitter.record(spec, result, frames)
        self._maybe_release(state)

    def release_actor(self, actor_id: bytes) -> None:
        """From ActorHandle.__del__ (any thread, maybe inside the garbage collector)."""
        self.client.call_soon(self._release_actor, actor_id)

    def _release_actor(self, actor_id: bytes) -> None:
        state = self.actors.get(actor_id)
        if state is not None:
            state.released = True
            self._maybe_release(state)

    def _maybe_release(self, state: ActorState) -> None:
        if state.released and not state.queue and not state.inflight and state.state != DEAD:
            state.released = False
            self.client.send("head", {"op": protocol.ACTOR_HANDLE_RELEASED, "actor_id": state.actor_id})

    def on_actor_update(self, msg, frames=None) -> None:
        """The head's news of an actor: a push (``ActorUpdate``) or the reply to our subscription."""
        info: ActorPublic | None = getattr(msg, "actor", None)
        if info is None:
            return
        state = self.actors.get(info.actor_id)
        if state is None:
            return
        new_state = info.state
        if new_state == ALIVE and (info.address is None or info.client_address is None):
            return  # an ALIVE actor we could not call: not something the head sends
        if new_state in (RESTARTING, DEAD) and state.address is not None:
            self.client.close_peer(state.address)
            retry = []
            for spec in state.inflight.values():
                self.client.forget_reply(spec.task_id)
                if new_state == RESTARTING and spec.retries_left != 0 and not spec.cancelled:
                    spec.retries_left -= 1 if spec.retries_left > 0 else 0
                    retry.append(spec)
                else:
                    self.submitter.fail(
                        spec,
                        exceptions.ActorDiedError(
                            info.death_cause
                            or "The actor died while running this call "
                            "(it is being restarted; set max_task_retries to retry calls).",
                            state.actor_id.hex(),
                        ),
                    )
            state.inflight.clear()
            state.queue.extendleft(reversed(retry))
            state.address = state.client_address = None
        state.state = new_state
        state.death_cause = info.death_cause
        if new_state == ALIVE:
            state.address = info.address
            state.client_address = info.client_address
            state.node_id = info.node_id
            state.pid = info.pid
        if new_state == DEAD:
            state.keepalive = None
        self._pump_actor(state)
