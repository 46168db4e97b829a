"""DeploymentHandle and DeploymentResponse: calling a deployment from Python (Ray's handle API)."""

import asyncio
import concurrent.futures
import threading
import time
import uuid

from ember.runtime.client.object_ref import ObjectRef
from ember.serve import router as routing


class DeploymentHandle:
    """Calls a deployment: ``handle.remote(...)`` or ``handle.method.remote(...)`` return a
    DeploymentResponse at once. Handles can be passed to other deployments and tasks."""

    def __init__(
        self,
        deployment_name: str,
        app_name: str,
        method_name: str = "__call__",
        stream: bool = False,
        multiplexed_model_id: str = "",
    ):
        self.deployment_name = deployment_name
        self.app_name = app_name
        self._method_name = method_name
        self._stream = stream
        self._model_id = multiplexed_model_id

    @property
    def deployment_id(self) -> str:
        return f"{self.app_name}#{self.deployment_name}"

    def options(
        self,
        *,
        method_name: str | None = None,
        multiplexed_model_id: str | None = None,
        stream: bool | None = None,
        use_new_handle_api: bool = True,
        **_ignored,
    ) -> "DeploymentHandle":
        """A copy of this handle whose calls go to ``method_name``, name a multiplexed model, or stream
        (``stream=True``: ``remote()`` gives a DeploymentResponseGenerator)."""
        if stream is not None and not isinstance(stream, bool):
            raise TypeError(f"stream must be True or False, got {stream!r}.")
        return DeploymentHandle(
            self.deployment_name,
            self.app_name,
            method_name or self._method_name,
            self._stream if stream is None else stream,
            self._model_id if multiplexed_model_id is None else multiplexed_model_id,
        )

    def __getattr__(self, name: str) -> "DeploymentHandle":
        if name.startswith("_"):
            raise AttributeError(name)
        return self.options(method_name=name)

    def remote(self, *args, **kwargs):
        """Call the deployment; returns a DeploymentResponse (a DeploymentResponseGenerator if streaming).

        A DeploymentResponse among the arguments is passed as its result, without waiting for it here."""
        meta = {"method": self._method_name, "request_id": uuid.uuid4().hex, "model_id": self._model_id}
        return _call(routing.hub().router(self.deployment_id), meta, args, kwargs, self._stream)

    def __reduce__(self):
        return DeploymentHandle, (self.deployment_name, self.app_name, self._method_name, self._stream, self._model_id)

    def __repr__(self):
        return f"DeploymentHandle(deployment={self.deployment_name!r}, app={self.app_name!r})"


def _call(router, meta, args, kwargs, stream):
    unresolved = [value for value in (*args, *kwargs.values()) if isinstance(value, DeploymentResponse)]
    if any(response._ref is None for response in unresolved):
        # An argument's request is still queued: resolve and send from the router's loop.
        future = asyncio.run_coroutine_threadsafe(_call_later(router, meta, args, kwargs, stream), router.hub.loop)
        return DeploymentResponseGenerator(router, future) if stream else DeploymentResponse(router, future)
    args = tuple(value._ref if isinstance(value, DeploymentResponse) else value for value in args)
    kwargs = {key: value._ref if isinstance(value, DeploymentResponse) else value for key, value in kwargs.items()}
    sent = router.submit(meta, args, kwargs, stream)
    return DeploymentResponseGenerator(router, sent) if stream else DeploymentResponse(router, sent)


async def _call_later(router, meta, args, kwargs, stream):
    async def ref_of(value):
        return await value._to_object_ref() if isinstance(value, DeploymentResponse) else value

    args = tuple([await ref_of(value) for value in args])
    kwargs = {key: await ref_of(value) for key, value in kwargs.items()}
    sent = router.submit(meta, args, kwargs, stream)
    if isinstance(sent, concurrent.futures.Future):
        sent = await asyncio.wrap_future(sent)
    return sent


class DeploymentResponse:
    """The future result of one call: ``.result(timeout_s=)``, ``await response``, or pass it to
    another handle call (the callee gets the value)."""

    def __init__(self, router, sent):
        self._router = router
        self._pending = None
        self._ref = None
        self._value_future = None
        self._lock = threading.Lock()
        if isinstance(sent, concurrent.futures.Future):
            self._pending = sent
            sent.add_done_callback(self._on_sent)
        else:
            self._on_sent_value(sent)

    def _on_sent(self, future) -> None:
        if future.exception() is None:
            self._on_sent_value(future.result())

    def _on_sent_value(self, sent) -> None:
        ref, slot = sent
        with self._lock:  # the sending thread's callback and a waiting caller may both get here
            if self._ref is not None:
                return
            self._value_future = ref.future()
            self._ref = ref
        self._value_future.add_done_callback(lambda f: self._router.release(slot, f.exception()))

    def _wait_sent(self, timeout: float | None):
        if self._ref is None:
            self._pending.result(timeout)  # raises BackPressureError, DeploymentUnavailableError, ...
            if self._ref is None:  # the callback runs just after result() returns
                self._on_sent_value(self._pending.result())
        return self._ref

    def result(self, *, timeout_s: float | None = None):
        """Wait for the result (at most ``timeout_s``): raises the deployment's own exception type,
        TimeoutError if it is not ready in time."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            self._wait_sent(timeout_s)
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            return self._value_future.result(remaining)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"The request did not finish within {timeout_s} s.") from None

    def __await__(self):
        return self._await().__await__()

    async def _await(self):
        await self._to_object_ref()
        return await asyncio.wrap_future(self._value_future)

    async def _to_object_ref(self) -> ObjectRef:
        if self._ref is None:
            await asyncio.wrap_future(self._pending)
            self._wait_sent(0)
        return self._ref

    def _to_object_ref_sync(self, timeout_s: float | None = None) -> ObjectRef:
        return self._wait_sent(timeout_s)

    def cancel(self) -> None:
        """Cancel the request: a queued one is never sent; a running one is cancelled on its replica."""
        if self._ref is None and self._pending is not None and self._router.cancel(self._pending):
            return
        import ember

        if self._ref is not None:
            ember.cancel(self._ref)


class DeploymentResponseGenerator:
    """The results of a streaming call (``handle.options(stream=True)``), one by one, sync or async."""

    def __init__(self, router, sent):
        self._router = router
        self._pending = sent if isinstance(sent, concurrent.futures.Future) else None
        self._sent = None if self._pending is not None else sent
        self._done = False

    def _generator(self, timeout=None):
        if self._sent is None:
            self._sent = self._pending.result(timeout)
        return self._sent[0]

    def _finish(self, error=None) -> None:
        if not self._done and self._sent is not None:
            self._done = True
            self._router.release(self._sent[1], error)

    def __iter__(self):
        return self

    def __next__(self):
        import ember

        try:
            ref = next(self._generator())
            return ember.get(ref)
        except StopIteration:
            self._finish()
            raise
        except BaseException as error:
            self._finish(error)
            raise

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._sent is None:
            self._sent = await asyncio.wrap_future(self._pending)
        try:
            ref = await self._sent[0].__anext__()
            return await ref
        except StopAsyncIteration:
            self._finish()
            raise
        except BaseException as error:
            self._finish(error)
            raise

    def __del__(self):
        # Maybe run by the garbage collector on a thread that holds the router's lock: the slot is
        # released on the hub's loop, not here.
        if not self._done and self._sent is not None:
            self._done = True
            try:
                self._router.hub.loop.call_soon_threadsafe(self._router.release, self._sent[1])
            except RuntimeError:
                pass  # the hub's loop is closed, and its routers with it
