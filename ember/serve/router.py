"""Routing a deployment's requests to its replicas, in every process that holds a handle.

Each process has one hub: an asyncio loop on a daemon thread that long-polls the controller for
each deployment's running replicas (the controller answers when they change) and sends queued
requests when a replica frees up. A request is sent at once, on the caller's thread, when a replica
has room; it is queued in the router otherwise (beyond ``max_queued_requests`` it is refused with
BackPressureError). A replica is chosen by the power of two choices: of two replicas picked at
random, the one with fewer of this router's requests in flight; no replica gets more than
``max_ongoing_requests`` from one router. A queued request has not started anywhere, so when a
replica dies it simply goes to another.
"""

import asyncio
import collections
import concurrent.futures
import random
import threading

import ember
from ember.exceptions import ActorDiedError, ActorUnavailableError
from ember.serve import context as serve_context
from ember.serve.exceptions import BackPressureError, DeploymentUnavailableError, RequestCancelledError

HANDLE_METRICS_PERIOD_S = 0.5
LIST_WAIT_S = 10.0


class _Slot:
    __slots__ = ("replica_id", "handle", "inflight", "models")

    def __init__(self, replica_id: str, handle, models=()):
        self.replica_id = replica_id
        self.handle = handle
        self.inflight = 0
        self.models = set(models)


class _Pending:
    __slots__ = ("meta", "args", "kwargs", "stream", "future")

    def __init__(self, meta, args, kwargs, stream):
        self.meta, self.args, self.kwargs, self.stream = meta, args, kwargs, stream
        self.future = concurrent.futures.Future()  # -> (what the replica call returned, its slot)


def choose(slots: list, max_ongoing: int, model_id: str = "", rng=random):
    """The replica for the next request, or None when every one has max_ongoing requests in flight.

    Of two replicas picked at random among those with room, the less loaded one; a request for a
    multiplexed model prefers replicas that have the model loaded."""
    free = [slot for slot in slots if slot.inflight < max_ongoing]
    if model_id:
        warm = [slot for slot in free if model_id in slot.models]
        free = warm or free
    if len(free) <= 1:
        return free[0] if free else None
    first, second = rng.sample(free, 2)
    return first if first.inflight <= second.inflight else second


class Router:
    """One deployment's replicas as this process sees them, with its requests in flight and queued."""

    def __init__(self, hub: "Hub", deployment_id: str):
        self.hub = hub
        self.deployment_id = deployment_id
        self.lock = threading.Lock()
        self.slots: dict = {}
        self.queue: collections.deque = collections.deque()
        self.max_ongoing = 1
        self.max_queued = -1
        self.version = -1
        self.deleted = False
        self.reported_queue = 0
        self.listed = threading.Event()  # the controller's first answer came: limits and replicas known
        self.poller = asyncio.run_coroutine_threadsafe(self._poll(), hub.loop)

    # --- from callers --------------------------------------------------------------------------------
    def submit(self, meta: dict, args: tuple, kwargs: dict, stream: bool):
        """Send the request now (returns (result, slot)) or queue it (returns a Future of that)."""
        if not self.listed.is_set() and threading.current_thread() is not self.hub.thread:
            # A new router's first requests wait for the replica list (a few ms), so that
            # max_queued_requests applies to them too.
            self.listed.wait(LIST_WAIT_S)
        with self.lock:
            if self.deleted:
                raise DeploymentUnavailableError(f"Deployment {self.deployment_id!r} has been deleted.")
            slot = None if self.queue else choose(list(self.slots.values()), self.max_ongoing, meta.get("model_id", ""))
            if slot is None:
                if self.max_queued != -1 and len(self.queue) >= self.max_queued:
                    raise BackPressureError(self.deployment_id.split("#", 1)[-1], len(self.queue), self.max_queued)
                pending = _Pending(meta, args, kwargs, stream)
                self.queue.append(pending)
            else:
                slot.inflight += 1
        if slot is None:
            self.hub.queue_grew()
            return pending.future
        return self._send(slot, meta, args, kwargs, stream), slot

    def cancel(self, future) -> bool:
        with self.lock:
            for pending in self.queue:
                if pending.future is future:
                    self.queue.remove(pending)
                    future.set_exception(RequestCancelledError("The request was cancelled before it was sent."))
                    return True
        return False

    def release(self, slot: _Slot, error: BaseException | None = None) -> None:
        """A request sent to ``slot`` finished (on any thread; the I/O thread included: no sends here)."""
        with self.lock:
            slot.inflight -= 1
            if isinstance(error, (ActorDiedError, ActorUnavailableError)):
                self.slots.pop(slot.replica_id, None)  # the controller will tell us of its replacement
            wake = bool(self.queue)
        if wake:
            self.hub.loop.call_soon_threadsafe(self._drain)

    # --- on the hub's loop ---------------------------------------------------------------------------
    def _send(self, slot: _Slot, meta, args, kwargs, stream):
        handle = slot.handle
        try:
            if stream:
                return handle.handle_request_streaming.remote(meta, *args, **kwargs)
            if meta.get("http"):
                return handle.handle_http.remote(meta, *args)
            return handle.handle_request.remote(meta, *args, **kwargs)
        except BaseException as error:
            self.release(slot, error)
            raise

    def _drain(self) -> None:
        while True:
            with self.lock:
                if not self.queue:
                    return
                slot = choose(list(self.slots.values()), self.max_ongoing, self.queue[0].meta.get("model_id", ""))
                if slot is None:
                    return
                pending = self.queue.popleft()
                slot.inflight += 1
            try:
                result = self._send(slot, pending.meta, pending.args, pending.kwargs, pending.stream)
            except BaseException as error:
                pending.future.set_exception(error)
                continue
            pending.future.set_result((result, slot))

    def _update(self, info: dict) -> None:
        failed = []
        with self.lock:
            if not info.get("exists", True):
                self.deleted = True
                failed, self.slots = list(self.queue), {}
                self.queue.clear()
            else:
                self.max_ongoing = info["max_ongoing_requests"]
                self.max_queued = info["max_queued_requests"]
                slots = {}
                for replica_id, handle, models in info["replicas"]:
                    slot = self.slots.get(replica_id) or _Slot(replica_id, handle)
                    slot.models = set(models)
                    slots[replica_id] = slot
                self.slots = slots
        self.listed.set()
        for pending in failed:
            pending.future.set_exception(
                DeploymentUnavailableError(
                    f"Deployment {self.deployment_id!r} was deleted before the request was sent."
                )
            )
        self._drain()

    async def _poll(self) -> None:
        controller = self.hub.controller()
        while not self.deleted:
            try:
                self.version, info = await controller.listen_for_replicas.remote(self.deployment_id, self.version)
            except Exception:  # the controller is gone: Serve was shut down
                self._update({"exists": False})
                return
            self._update(info)

    def queued(self) -> int:
        return len(self.queue)


class Hub:
    """This process's routers and the event loop thread they share."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.routers: dict = {}
        self.lock = threading.Lock()
        self._controller = None
        self.reporting = False  # the reporter is awake (a queue is, or was lately, not empty)
        self.queues_busy = asyncio.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, name="serve-router", daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._report(), self.loop)

    def controller(self):
        if self._controller is None:
            self._controller = ember.get_actor(serve_context.CONTROLLER_NAME, namespace=serve_context.SERVE_NAMESPACE)
        return self._controller

    def router(self, deployment_id: str) -> Router:
        router = self.routers.get(deployment_id)
        if router is None or router.deleted:
            with self.lock:
                router = self.routers.get(deployment_id)
                if router is None or router.deleted:
                    router = self.routers[deployment_id] = Router(self, deployment_id)
        return router

    def queue_grew(self) -> None:
        """A request was queued (any thread): wake the reporter if it sleeps."""
        if not self.reporting:
            self.reporting = True
            self.loop.call_soon_threadsafe(self.queues_busy.set)

    async def _report(self) -> None:
        """Queued requests count toward autoscaling: push each router's queue length when it changes,
        every HANDLE_METRICS_PERIOD_S while some queue is or was not empty; asleep otherwise."""
        while True:
            await self.queues_busy.wait()
            await asyncio.sleep(HANDLE_METRICS_PERIOD_S)
            if not self._push_queue_lengths():
                # Mark asleep first, then look again: a request queued meanwhile sees the mark and wakes us.
                self.reporting = False
                if not self._push_queue_lengths():
                    self.queues_busy.clear()
                else:
                    self.reporting = True

    def _push_queue_lengths(self) -> bool:
        """Push the queue lengths that changed; whether any queue is still not empty."""
        busy = False
        for router in list(self.routers.values()):
            queued = router.queued()
            busy = busy or queued > 0
            if queued != router.reported_queue and not router.deleted:
                router.reported_queue = queued
                try:
                    self.controller().record_handle_metrics.remote(router.deployment_id, id(self), queued)
                except Exception:
                    pass
        return busy

    def close(self) -> None:
        def stop():
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.call_soon(self.loop.stop)

        self.loop.call_soon_threadsafe(stop)


_hub: Hub | None = None
_hub_client = None
_hub_lock = threading.Lock()


def hub() -> Hub:
    """This process's hub (a new one after the cluster changed or Serve was shut down)."""
    global _hub, _hub_client
    from ember.runtime.client.core_client import current_client

    client = current_client()
    if _hub is None or _hub_client is not client:
        with _hub_lock:
            if _hub is None or _hub_client is not client:
                if _hub is not None:
                    _hub.close()
                _hub, _hub_client = Hub(), client
    return _hub


def reset() -> None:
    """Forget every router (after serve.shutdown): handles made later find the new controller."""
    global _hub
    with _hub_lock:
        if _hub is not None:
            _hub.close()
        _hub = None
