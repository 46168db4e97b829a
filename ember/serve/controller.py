"""The Serve controller: a detached, named actor that owns every application's desired state.

It keeps the Reconciler (what should run) and carries out its actions: replicas are actors it
starts, watches (a pending ``wait_until_stopped`` call fails the moment a replica dies, so deaths
are events, not polls), health-checks and stops. Routers and the proxy long-poll it for the
replicas and routes they need; replicas and routers push their load to it, which drives
autoscaling and the figures ``serve.status()`` and the widget show.
"""

import asyncio
import collections
import dataclasses
import time

import ember
from ember.serve.autoscaling import AutoscalingState
from ember.serve.config import AutoscalingConfig
from ember.serve.reconciler import DEPLOY_FAILED, HEALTHY, UNHEALTHY, CheckHealth, Reconciler, Start, Stop
from ember.serve.replica import ServeReplica

CONTROL_PERIOD_S = 0.2
LONG_POLL_S = 30.0
STATS_WINDOW_S = 10.0
STATUS_PERIOD_S = 0.5  # how often, at most, a changed status is pushed to its listeners (the widget)


@dataclasses.dataclass
class DeploymentInfo:
    app: str
    name: str
    target: bytes
    init_args: tuple
    init_kwargs: dict
    version: str
    config: dict
    autoscaling: AutoscalingConfig | None


@dataclasses.dataclass
class AppInfo:
    route_prefix: str | None
    ingress: str
    deployments: list
    deployed_at: float
    deleting: bool = False


class _Changes:
    """Versioned values that long-polling callers wait on."""

    def __init__(self):
        self.values: dict = {}
        self.versions: dict = {}
        self.events: dict = {}

    def publish(self, key, value) -> None:
        if self.values.get(key, _MISSING) == value:
            return
        self.values[key] = value
        self.versions[key] = self.versions.get(key, 0) + 1
        event = self.events.pop(key, None)
        if event is not None:
            event.set()

    async def listen(self, key, known: int):
        if self.versions.get(key, 0) == known:
            event = self.events.setdefault(key, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), LONG_POLL_S)
            except asyncio.TimeoutError:
                pass
        return self.versions.get(key, 0), self.values.get(key)


_MISSING = object()


class ServeController:
    """The controller actor (``SERVE_CONTROLLER_ACTOR`` in the ``serve`` namespace)."""

    def __init__(self):
        self.reconciler = Reconciler()
        self.apps: dict = {}
        self.deployments: dict = {}
        self.replicas: dict = {}  # replica id -> actor handle
        self.pids: dict = {}
        self.autoscalers: dict = {}
        self.replica_load: dict = collections.defaultdict(dict)  # deployment -> replica -> (ongoing, time)
        self.replica_models: dict = {}  # replica -> multiplexed model ids it has loaded
        self.handle_load: dict = collections.defaultdict(dict)  # deployment -> handle -> (queued, time)
        self.stats: dict = collections.defaultdict(collections.deque)  # deployment -> (time, done, errors, latencies)
        self.changes = _Changes()
        self.settled = None
        self.wakeup = None
        self.loop_task = None
        self.proxy = None
        self.proxy_address = None
        self.tasks: set = set()
        self.status_pushed = 0.0

    # --- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.loop_task is None:
            self.wakeup, self.settled = asyncio.Event(), asyncio.Event()
            self.loop_task = asyncio.get_running_loop().create_task(self._control_loop())

    async def start_proxy(self, http_options: dict) -> str:
        """Start the HTTP proxy (once); returns the address it listens on, as http://host:port."""
        if self.proxy is None:
            from ember.serve.proxy import ProxyActor

            self.proxy = ember.remote(ProxyActor).options(num_cpus=0, max_restarts=0).remote(http_options)
            self.proxy_address = await self.proxy.ready.remote()
        return self.proxy_address

    def http_address(self):
        return self.proxy_address

    async def shutdown(self, timeout_s: float = 20.0) -> None:
        """Delete every application, wait for its replicas to stop, stop the proxy."""
        for name in list(self.apps):
            await self.delete_application(name)
        try:
            await asyncio.wait_for(self._all_stopped(), timeout_s)
        except asyncio.TimeoutError:
            pass  # the rest are killed below
        for replica_id, handle in list(self.replicas.items()):
            ember.kill(handle)
            self.replicas.pop(replica_id, None)
        if self.proxy is not None:
            ember.kill(self.proxy)
            self.proxy = None

    async def _all_stopped(self) -> None:
        # The control loop sets ``settled`` after each round; a round follows every replica's stop.
        while self.reconciler.targets:
            self.settled.clear()
            await self.settled.wait()

    # --- applications --------------------------------------------------------------------------------
    async def deploy_application(self, name: str, route_prefix, ingress: str, specs: list) -> None:
        if route_prefix is not None:
            for other, app in self.apps.items():
                if other != name and app.route_prefix == route_prefix and not app.deleting:
                    raise ValueError(f"Prefix {route_prefix} is being used by application {other!r}.")
        old = self.apps.get(name)
        wanted = {spec["name"] for spec in specs}
        if old is not None:
            for dep in old.deployments:
                if dep not in wanted:
                    self._remove_deployment(f"{name}#{dep}")
        self.apps[name] = AppInfo(route_prefix, ingress, [spec["name"] for spec in specs], time.time())
        for spec in specs:
            self._deploy(name, spec)
        self._publish_routes()
        self._wake()

    def _deploy(self, app: str, spec: dict) -> None:
        dep_id = f"{app}#{spec['name']}"
        config = spec["config"]
        autoscaling = AutoscalingConfig.of(config.get("autoscaling_config"))
        previous = self.deployments.get(dep_id)
        self.deployments[dep_id] = DeploymentInfo(
            app,
            spec["name"],
            spec["target"],
            spec["init_args"],
            spec["init_kwargs"],
            spec["version"],
            config,
            autoscaling,
        )
        if autoscaling is not None:
            state = self.autoscalers.get(dep_id)
            if state is None or state.config != autoscaling:
                keep = state.target if state is not None else None
                state = self.autoscalers[dep_id] = AutoscalingState(autoscaling)
                if keep is not None:
                    state.target = max(autoscaling.min_replicas, min(autoscaling.max_replicas, keep))
            count = state.target
        else:
            self.autoscalers.pop(dep_id, None)
            count = config["num_replicas"]
        self.reconciler.set_target(dep_id, spec["version"], count, config["health_check_period_s"])
        if (
            previous is not None
            and previous.version == spec["version"]
            and previous.config.get("user_config") != config.get("user_config")
        ):
            for replica_id in self.reconciler.running(dep_id):
                self._spawn(self.replicas[replica_id].reconfigure.remote(config.get("user_config")))
        self._publish_replicas(dep_id)

    def _remove_deployment(self, dep_id: str) -> None:
        self.reconciler.remove(dep_id)
        self.deployments.pop(dep_id, None)
        self.autoscalers.pop(dep_id, None)
        self.changes.publish(("replicas", dep_id), {"exists": False})

    async def delete_application(self, name: str) -> None:
        app = self.apps.get(name)
        if app is None:
            return
        app.deleting = True
        for dep in app.deployments:
            self._remove_deployment(f"{name}#{dep}")
        self._publish_routes()
        self._wake()

    async def wait_for_application(self, name: str, timeout_s: float | None, deleted: bool = False) -> dict:
        """Wait until the application runs or failed (or, with ``deleted``, is gone); returns the status."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            status = self.status()["applications"].get(name)
            if deleted and status is None:
                return {}
            if not deleted and (status is None or status["status"] in ("RUNNING", "DEPLOY_FAILED")):
                return status or {}
            if deadline is not None and time.monotonic() > deadline:
                return status
            self.settled.clear()
            try:
                await asyncio.wait_for(self.settled.wait(), 0.5)
            except asyncio.TimeoutError:
                pass

    # --- long polls and pushed metrics ---------------------------------------------------------------
    async def listen_for_replicas(self, dep_id: str, known: int):
        version, value = await self.changes.listen(("replicas", dep_id), known)
        return version, value if value is not None else {
            "exists": dep_id in self.deployments,
            "replicas": [],
            "max_ongoing_requests": 1,
            "max_queued_requests": -1,
        }

    async def listen_for_status(self, known: int):
        """The status (as ``status()``) once it differs from version ``known``: what the widget shows."""
        return await self.changes.listen("status", known)

    async def listen_for_routes(self, known: int):
        version, value = await self.changes.listen("routes", known)
        return version, value or {}

    def record_replica_metrics(self, dep_id: str, replica_id: str, metrics: dict) -> None:
        now = time.monotonic()
        self.replica_load[dep_id][replica_id] = (metrics["ongoing"], now)
        self.replica_models[replica_id] = tuple(metrics.get("models", ()))
        stats = self.stats[dep_id]
        stats.append((now, metrics["completed"], metrics["errors"], metrics["latencies_ms"]))
        while stats and stats[0][0] < now - STATS_WINDOW_S:
            stats.popleft()

    def record_handle_metrics(self, dep_id: str, handle_key, queued: int) -> None:
        self.handle_load[dep_id][handle_key] = (queued, time.monotonic())

    # --- status --------------------------------------------------------------------------------------
    def status(self) -> dict:
        """Applications, deployments and replicas with their states and recent load (plain dicts)."""
        applications = {}
        for name, app in self.apps.items():
            deployments = {}
            for dep in app.deployments:
                dep_id = f"{name}#{dep}"
                if dep_id not in self.reconciler.targets:
                    continue
                state, trigger, message, counts = self.reconciler.status(dep_id)
                deployments[dep] = {
                    "status": state,
                    "status_trigger": trigger,
                    "message": message,
                    "replica_states": counts,
                    "target_replicas": self.reconciler.targets[dep_id].num_replicas,
                    **self._figures(dep_id),
                }
            states = {d["status"] for d in deployments.values()}
            if app.deleting:
                app_status = "DELETING"
            elif DEPLOY_FAILED in states:
                app_status = "DEPLOY_FAILED"
            elif UNHEALTHY in states:
                app_status = "UNHEALTHY"
            elif states <= {HEALTHY, "UPSCALING", "DOWNSCALING"} and (states or not app.deployments):
                app_status = "RUNNING"
            else:
                app_status = "DEPLOYING"
            message = "; ".join(f"{dep}: {d['message']}" for dep, d in deployments.items() if d["message"])
            applications[name] = {
                "status": app_status,
                "message": message,
                "last_deployed_time_s": app.deployed_at,
                "route_prefix": app.route_prefix,
                "ingress": app.ingress,
                "deployments": deployments,
            }
        return {"applications": applications, "proxy": self.proxy_address}

    def _figures(self, dep_id: str) -> dict:
        now = time.monotonic()
        stats = [s for s in self.stats.get(dep_id, ()) if s[0] >= now - STATS_WINDOW_S]
        latencies = sorted(value for s in stats for value in s[3])
        span = min(STATS_WINDOW_S, now - stats[0][0] + 0.5) if stats else STATS_WINDOW_S

        def pct(q):
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else None

        load = self.replica_load.get(dep_id, {})
        return {
            "requests_per_s": sum(s[1] for s in stats) / span if stats else 0.0,
            "errors_per_s": sum(s[2] for s in stats) / span if stats else 0.0,
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
            "queued": sum(q for q, _ in self.handle_load.get(dep_id, {}).values()),
            "replicas": {
                replica_id: {"ongoing": load.get(replica_id, (0, 0))[0], "pid": self.pids.get(replica_id)}
                for replica_id in self.reconciler.running(dep_id)
            },
        }

    # --- the control loop ----------------------------------------------------------------------------
    def _wake(self) -> None:
        if self.wakeup is not None:
            self.wakeup.set()

    async def _control_loop(self) -> None:
        while True:
            now = time.monotonic()
            self._autoscale(now)
            for action in self.reconciler.step(now):
                self._execute(action)
            for dep_id in list(self.deployments):
                self._publish_replicas(dep_id)
            for name, app in list(self.apps.items()):
                if app.deleting and not any(f"{name}#{d}" in self.reconciler.targets for d in app.deployments):
                    del self.apps[name]
            if now - self.status_pushed >= STATUS_PERIOD_S:
                self.status_pushed = now
                self.changes.publish("status", self.status())
            self.settled.set()
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), CONTROL_PERIOD_S)
            except asyncio.TimeoutError:
                pass

    def _autoscale(self, now: float) -> None:
        for dep_id, state in self.autoscalers.items():
            horizon = now - max(state.config.look_back_period_s, 2.0)
            running = self.reconciler.running(dep_id)
            load = self.replica_load.get(dep_id, {})
            total = sum(load[r][0] for r in running if r in load and load[r][1] >= horizon)
            total += sum(q for q, at in self.handle_load.get(dep_id, {}).values() if at >= horizon)
            state.record(now, total)
            target = state.decide(now, len(running))
            if target != self.reconciler.targets[dep_id].num_replicas:
                self.reconciler.set_num_replicas(dep_id, target)

    def _execute(self, action) -> None:
        if isinstance(action, Start):
            self._spawn(self._start_replica(action))
        elif isinstance(action, Stop):
            self._spawn(self._stop_replica(action))
        elif isinstance(action, CheckHealth):
            self._spawn(self._check_health(action))

    def _spawn(self, awaitable) -> None:
        async def run():
            await awaitable

        task = asyncio.get_running_loop().create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _start_replica(self, action: Start) -> None:
        info = self.deployments.get(action.deployment)
        if info is None:
            return self.reconciler.stopped(action.replica_id)
        options = {"num_cpus": 1, **info.config["ray_actor_options"]}
        try:
            handle = (
                ember.remote(ServeReplica)
                .options(max_restarts=0, max_concurrency=100_000, **options)
                .remote(
                    info.app,
                    info.name,
                    action.replica_id,
                    info.target,
                    info.init_args,
                    info.init_kwargs,
                    info.config["max_ongoing_requests"],
                    info.config.get("user_config"),
                )
            )
        except Exception as error:
            self.reconciler.start_failed(action.replica_id, repr(error))
            return self._wake()
        self.replicas[action.replica_id] = handle
        try:
            self.pids[action.replica_id] = await handle.ready.remote()
        except Exception as error:
            self.replicas.pop(action.replica_id, None)
            ember.kill(handle)
            self.reconciler.start_failed(action.replica_id, _short(error))
            return self._wake()
        self.reconciler.started(action.replica_id, time.monotonic())
        self._wake()
        try:
            await handle.wait_until_stopped.remote()
        except Exception as error:
            if action.replica_id in self.replicas:
                self.replicas.pop(action.replica_id, None)
                self.reconciler.died(action.replica_id, _short(error))
                self._wake()

    async def _stop_replica(self, action: Stop) -> None:
        handle = self.replicas.get(action.replica_id)
        info = self.deployments.get(action.deployment)
        self._publish_replicas(action.deployment)  # routers stop sending to it first
        if handle is not None and action.graceful:
            timeout = info.config["graceful_shutdown_timeout_s"] if info else 20.0
            wait_loop = info.config["graceful_shutdown_wait_loop_s"] if info else 2.0
            try:
                await asyncio.wait_for(
                    asyncio.wrap_future(handle.prepare_for_shutdown.remote(timeout, wait_loop).future()), timeout + 5
                )
            except Exception:
                pass
        self.replicas.pop(action.replica_id, None)
        self.pids.pop(action.replica_id, None)
        if handle is not None:
            try:
                ember.kill(handle)
            except Exception:
                pass
        self.reconciler.stopped(action.replica_id)
        self._wake()

    async def _check_health(self, action: CheckHealth) -> None:
        handle = self.replicas.get(action.replica_id)
        info = self.deployments.get(action.deployment)
        if handle is None or info is None:
            return
        try:
            ref = handle.check_health.remote()
            await asyncio.wait_for(asyncio.wrap_future(ref.future()), info.config["health_check_timeout_s"])
            ok = True
        except Exception:
            ok = False
        self.reconciler.health(action.replica_id, ok, time.monotonic())
        if not ok:
            self._wake()

    # --- what routers and the proxy see -------------------------------------------------------------
    def _publish_replicas(self, dep_id: str) -> None:
        info = self.deployments.get(dep_id)
        if info is None:
            return
        running = [
            (r, self.replicas[r], self.replica_models.get(r, ()))
            for r in self.reconciler.running(dep_id)
            if r in self.replicas
        ]
        self.changes.publish(
            ("replicas", dep_id),
            {
                "exists": True,
                "replicas": running,
                "max_ongoing_requests": info.config["max_ongoing_requests"],
                "max_queued_requests": info.config["max_queued_requests"],
            },
        )

    def _publish_routes(self) -> None:
        routes = {
            app.route_prefix: (name, app.ingress)
            for name, app in self.apps.items()
            if app.route_prefix is not None and not app.deleting
        }
        self.changes.publish("routes", routes)


def _short(error: BaseException) -> str:
    text = str(error).strip()
    return text if len(text) < 2000 else text[:1000] + "\n...\n" + text[-1000:]
