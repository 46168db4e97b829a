"""A replica: one actor running one copy of a deployment's class (or function).

Requests arrive from handles (``handle_request``, ``handle_request_streaming``) and from the HTTP
proxy (``handle_http``: a whole response in one plain call; ``stream_http`` for the rest of a response
that comes in pieces, as it is produced). The replica counts
its ongoing requests, runs at most ``max_ongoing_requests`` of them at once, and pushes its load
and latencies to the controller (autoscaling, the widget) about twice a second while it has work.
Synchronous user methods run on a thread pool so they never block the replica's event loop.
"""

import asyncio
import contextvars
import inspect
import os
import pickle
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import ember
from ember.serve import context as serve_context

METRICS_PERIOD_S = 0.5
QUIET_BEFORE_STOP_S = 0.5
STREAM_CLAIM_TIMEOUT_S = 60.0


class ServeReplica:
    """The actor class every replica runs (an async actor: its calls share one event loop)."""

    def __init__(
        self,
        app_name: str,
        deployment: str,
        replica_id: str,
        target: bytes,
        init_args,
        init_kwargs,
        max_ongoing_requests: int,
        user_config=None,
    ):
        self.app_name, self.deployment, self.replica_id = app_name, deployment, replica_id
        self.max_ongoing_requests = max_ongoing_requests
        self.pool = ThreadPoolExecutor(max_ongoing_requests, thread_name_prefix="serve-replica")
        self.ongoing = 0
        self.completed = 0
        self.errors = 0
        self.latencies: list = []
        self.open_streams: dict = {}  # key -> (the response's messages, start time, expiry timer)
        self.begun = 0  # requests ever begun: a quiet period is one in which it did not change
        # Made here, not in ready(): the controller's wait_until_stopped may come first.
        self.stopping = asyncio.Event()
        self.idle = asyncio.Event()  # set while no request is ongoing
        self.idle.set()
        self.active = asyncio.Event()  # a request began since the metrics pusher last looked
        self.metrics_task = None
        self.user_config = user_config
        target = pickle.loads(target)
        self.is_function = not inspect.isclass(target)
        serve_context.set_replica_context(serve_context.ReplicaContext(app_name, deployment, replica_id))
        if self.is_function:
            self.instance, self.call = None, target
        else:
            self.instance = target(*init_args, **init_kwargs)
            self.call = self.instance.__call__ if callable(self.instance) else None
        serve_context.set_replica_context(
            serve_context.ReplicaContext(app_name, deployment, replica_id, self.instance or target)
        )
        self.asgi = None
        asgi_app = getattr(type(self.instance), "__serve_asgi_app__", None) if self.instance is not None else None
        if asgi_app is not None:
            from ember.serve.ingress import bind_asgi_app

            self.asgi = bind_asgi_app(asgi_app, self.instance)

    # --- control (from the controller) -------------------------------------------------------------
    async def ready(self) -> int:
        """Finish starting (apply user_config) and start pushing metrics; returns the process id."""
        if self.user_config is not None:
            await self.reconfigure(self.user_config)
        self.metrics_task = asyncio.get_running_loop().create_task(self._push_metrics())
        return os.getpid()

    async def reconfigure(self, user_config) -> None:
        self.user_config = user_config
        method = getattr(self.instance, "reconfigure", None)
        if method is None:
            if user_config is not None and self.instance is not None:
                raise ValueError(f"user_config was given, but deployment {self.deployment!r} has no reconfigure().")
            return
        await self._run(method, (user_config,), {})

    async def check_health(self) -> None:
        method = getattr(self.instance, "check_health", None)
        if method is not None:
            await self._run(method, (), {})

    async def wait_until_stopped(self) -> None:
        """Returns when the replica is told to stop; fails with ActorDiedError if it dies first,
        which is how the controller learns of a death without polling."""
        await self.stopping.wait()

    async def prepare_for_shutdown(self, timeout_s: float, wait_loop_s: float) -> None:
        """Let ongoing requests finish (up to ``timeout_s``), then run the user's __del__.

        Routers learn of the stop a moment after the controller decides it, so a request may still
        be on its way: the replica stops only once it has had none for a short quiet period."""
        try:
            await asyncio.wait_for(self._quiet(min(wait_loop_s, QUIET_BEFORE_STOP_S)), timeout_s)
        except asyncio.TimeoutError:
            pass
        self.stopping.set()
        if self.metrics_task is not None:
            self.metrics_task.cancel()
        finalizer = getattr(self.instance, "__del__", None)
        if finalizer is not None:
            try:
                await self._run(finalizer, (), {})
            except Exception:
                pass

    async def _quiet(self, period_s: float) -> None:
        """Returns once no request has been ongoing, and none has begun, for ``period_s``."""
        while True:
            await self.idle.wait()
            begun = self.begun
            await asyncio.sleep(period_s)
            if not self.ongoing and self.begun == begun:
                return

    def num_ongoing_requests(self) -> int:
        return self.ongoing

    # --- requests ------------------------------------------------------------------------------------
    async def handle_request(self, meta: dict, *args, **kwargs):
        started = self._begin(meta)
        ok = False
        try:
            result = await self._run(self._method(meta), args, kwargs)
            ok = True
            return result
        finally:
            self._end(started, ok)

    async def handle_request_streaming(self, meta: dict, *args, **kwargs):
        started = self._begin(meta)
        ok = False
        try:
            result = await self._run(self._method(meta), args, kwargs, generator=True)
            async for item in _iterate(result, self.pool):
                yield item
            ok = True
        finally:
            self._end(started, ok)

    async def handle_http(self, meta: dict, scope: dict, body: bytes):
        """Serve one HTTP request with a plain call: returns (status, headers, body, stream key).

        Most responses come whole, in one message, and cost one hop. A response whose body comes
        in pieces returns its first piece and a key; the proxy takes the rest from
        ``stream_http(key)``, a streaming call, and the request counts as ongoing until it ends."""
        started = self._begin(meta)
        messages = self._http_messages(scope, body)
        try:
            status, headers, chunk, more = await messages.__anext__()
        except StopAsyncIteration:
            self._end(started, False)
            raise RuntimeError("The deployment returned no response.") from None
        except BaseException:
            self._end(started, False)
            raise
        if not more:
            await messages.aclose()
            self._end(started, True)
            return status, headers, chunk, None
        key = uuid.uuid4().hex
        # A proxy that never asks for the rest (it died, say) must not hold the request forever.
        expiry = asyncio.get_running_loop().call_later(STREAM_CLAIM_TIMEOUT_S, self._abandon_stream, key)
        self.open_streams[key] = (messages, started, expiry)
        return status, headers, chunk, key

    async def stream_http(self, key: str):
        """The rest of a streaming HTTP response that ``handle_http`` began: its body chunks."""
        entry = self.open_streams.pop(key, None)
        if entry is None:
            raise RuntimeError("The streaming response is gone: it was not claimed in time.")
        messages, started, expiry = entry
        expiry.cancel()
        ok = False
        try:
            async for chunk in messages:
                yield chunk
            ok = True
        finally:
            await messages.aclose()
            self._end(started, ok)

    def _abandon_stream(self, key: str) -> None:
        entry = self.open_streams.pop(key, None)
        if entry is not None:
            asyncio.get_running_loop().create_task(entry[0].aclose())
            self._end(entry[1], False)

    async def _http_messages(self, scope: dict, body: bytes):
        """(status, headers, first body chunk, more to come), then the later chunks."""
        from ember.serve.http_util import run_asgi, to_response

        sent = False

        async def receive():
            nonlocal sent
            if sent:
                await asyncio.Event().wait()  # a client that is still connected: nothing more
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        app = self.asgi
        if app is None:
            from starlette.requests import Request

            if self.call is None:
                raise TypeError(f"Deployment {self.deployment!r} has no __call__ method to take HTTP requests.")
            result = await self._run(self.call, (Request(scope, receive),), {})
            app = to_response(result)
        async for message in run_asgi(app, scope, receive):
            yield message

    # --- internals -----------------------------------------------------------------------------------
    def _method(self, meta: dict):
        name = meta.get("method") or "__call__"
        if self.is_function:
            if name != "__call__":
                raise AttributeError(f"Function deployment {self.deployment!r} has no method {name!r}.")
            return self.call
        method = getattr(self.instance, name, None)
        if method is None or name.startswith("_") and name != "__call__":
            raise AttributeError(f"Deployment {self.deployment!r} has no method {name!r}.")
        return method

    def _begin(self, meta: dict) -> float:
        self.ongoing += 1
        self.begun += 1
        self.idle.clear()
        self.active.set()
        serve_context.request_context.set(
            serve_context.RequestContext(
                route=meta.get("route", ""),
                request_id=meta.get("request_id", ""),
                app_name=self.app_name,
                multiplexed_model_id=meta.get("model_id", ""),
            )
        )
        return time.perf_counter()

    def _end(self, started: float, ok: bool) -> None:
        self.ongoing -= 1
        if not self.ongoing:
            self.idle.set()
        self.completed += 1
        self.errors += not ok
        if len(self.latencies) < 1000:
            self.latencies.append((time.perf_counter() - started) * 1000)

    async def _run(self, function, args, kwargs, generator: bool = False):
        if (
            inspect.iscoroutinefunction(function)
            or inspect.isasyncgenfunction(function)
            or (generator and inspect.isgeneratorfunction(function))
        ):
            result = function(*args, **kwargs)
        else:
            # Sync code runs on the pool, in this request's context (get_multiplexed_model_id works).
            call = contextvars.copy_context().run
            result = await asyncio.get_running_loop().run_in_executor(self.pool, call, function, *args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _push_metrics(self) -> None:
        controller = ember.get_actor(serve_context.CONTROLLER_NAME, namespace=serve_context.SERVE_NAMESPACE)
        idle_reported = False
        while True:
            await asyncio.sleep(METRICS_PERIOD_S)
            if not self.ongoing and not self.completed:
                if idle_reported:
                    # Nothing to tell until a request comes: sleep until one does, not in periods.
                    self.active.clear()
                    await self.active.wait()
                    continue
                idle_reported = True
            else:
                idle_reported = False
            from ember.serve.multiplex import loaded_model_ids

            metrics = {
                "ongoing": self.ongoing,
                "completed": self.completed,
                "errors": self.errors,
                "latencies_ms": self.latencies,
                "models": loaded_model_ids(),
            }
            self.completed, self.errors, self.latencies = 0, 0, []
            try:
                controller.record_replica_metrics.remote(f"{self.app_name}#{self.deployment}", self.replica_id, metrics)
            except Exception:
                return  # the controller is gone: Serve is shutting down


async def _iterate(result, pool):
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
        return
    if not hasattr(result, "__next__"):
        raise TypeError(f"A streaming call must return a generator, got {type(result).__name__}.")
    loop = asyncio.get_running_loop()
    done = object()
    while True:
        item = await loop.run_in_executor(pool, next, result, done)
        if item is done:
            return
        yield item
