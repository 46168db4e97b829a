"""Serve's public functions: run, start, status, delete, shutdown and the handle getters."""

import dataclasses
import enum
import hashlib
import threading

import cloudpickle

import ember
from ember.runtime.serialization import dumps_function
from ember.serve import context as serve_context
from ember.serve import router as routing
from ember.serve.config import HTTPOptions
from ember.serve.deployment import Application
from ember.serve.exceptions import RayServeException
from ember.serve.handle import DeploymentHandle

DEPLOY_TIMEOUT_S = 300.0


class ApplicationStatus(str, enum.Enum):
    NOT_STARTED = "NOT_STARTED"
    DEPLOYING = "DEPLOYING"
    DEPLOY_FAILED = "DEPLOY_FAILED"
    RUNNING = "RUNNING"
    UNHEALTHY = "UNHEALTHY"
    DELETING = "DELETING"


class DeploymentStatus(str, enum.Enum):
    UPDATING = "UPDATING"
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    DEPLOY_FAILED = "DEPLOY_FAILED"
    UPSCALING = "UPSCALING"
    DOWNSCALING = "DOWNSCALING"


@dataclasses.dataclass
class DeploymentStatusOverview:
    status: DeploymentStatus
    status_trigger: str
    replica_states: dict
    message: str = ""
    # Ember's own: the target count and recent load (what the widget shows).
    target_replicas: int = 0
    requests_per_s: float = 0.0
    errors_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    queued: int = 0
    replicas: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ApplicationStatusOverview:
    status: ApplicationStatus
    message: str
    last_deployed_time_s: float
    deployments: dict
    route_prefix: str | None = None


@dataclasses.dataclass
class ServeStatus:
    proxies: dict = dataclasses.field(default_factory=dict)
    applications: dict = dataclasses.field(default_factory=dict)
    target_capacity: float | None = None


def _controller(required: bool = True):
    try:
        return ember.get_actor(serve_context.CONTROLLER_NAME, namespace=serve_context.SERVE_NAMESPACE)
    except ValueError:
        if required:
            raise RayServeException("Serve is not running: call serve.start() or serve.run() first.") from None
        return None


def start(http_options=None, **_ray_options) -> None:
    """Start Serve on the cluster (connecting to one, or starting one, if needed): its controller and
    HTTP proxy, which listens on ``http_options`` (host 127.0.0.1, port 8000 by default)."""
    options = HTTPOptions.of(http_options)
    if not ember.is_initialized():
        ember.init()
    controller = _controller(required=False)
    if controller is None:
        from ember.serve.controller import ServeController

        controller = (
            ember.remote(ServeController)
            .options(
                name=serve_context.CONTROLLER_NAME,
                namespace=serve_context.SERVE_NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
            )
            .remote()
        )
    ember.get(controller.start.remote())
    ember.get(controller.start_proxy.remote(dataclasses.asdict(options)))


def _http_address() -> str | None:
    """Where the proxy listens, as http://host:port (None before serve.start)."""
    controller = _controller(required=False)
    return None if controller is None else ember.get(controller.http_address.remote())


def _convert(value, visit):
    if isinstance(value, Application):
        return visit(value)
    if isinstance(value, list):
        return [_convert(v, visit) for v in value]
    if isinstance(value, tuple):
        return tuple(_convert(v, visit) for v in value)
    if isinstance(value, dict):
        return {k: _convert(v, visit) for k, v in value.items()}
    return value


def build(app: Application, app_name: str) -> tuple:
    """(ingress deployment name, the specs of every deployment in the graph) for the controller."""
    specs: dict = {}
    seen: dict = {}

    def visit(application: Application) -> DeploymentHandle:
        deployment = application.deployment
        name = deployment.name
        if name in seen:
            if seen[name] is not application:
                raise RayServeException(
                    f"The application has two different deployments named {name!r}: give one another name "
                    "with .options(name=...)."
                )
            return DeploymentHandle(name, app_name)
        seen[name] = application
        args = _convert(application._args, visit)
        kwargs = _convert(application._kwargs, visit)
        target = dumps_function(deployment.func_or_class)
        config = dataclasses.asdict(deployment._config)
        code = cloudpickle.dumps((args, kwargs, config["ray_actor_options"], config["max_ongoing_requests"]))
        version = deployment.version or hashlib.sha1(target + code).hexdigest()[:16]
        specs[name] = {
            "name": name,
            "target": target,
            "init_args": args,
            "init_kwargs": kwargs,
            "version": version,
            "config": config,
        }
        return DeploymentHandle(name, app_name)

    ingress = visit(app)
    return ingress.deployment_name, list(specs.values())


def run(
    target: Application,
    blocking: bool = False,
    name: str = "default",
    route_prefix: str | None = "/",
    _blocking: bool = True,
    **_ignored,
) -> DeploymentHandle:
    """Deploy the application ``target`` as ``name`` at ``route_prefix`` (None: no HTTP route) and
    return a handle to its ingress deployment once it runs. It returns at once in a notebook or a
    script; ``blocking=True`` then waits (serving) until interrupted, shuts Serve down and lets the
    KeyboardInterrupt go on. An interrupt while a non-blocking run deploys stops only the wait: the
    application goes on deploying (``serve.status()`` shows it; ``serve.delete`` removes it)."""
    if isinstance(target, ember.serve.Deployment):
        raise TypeError(f"serve.run() takes an Application: use {target.name}.bind(...).")
    if not isinstance(target, Application):
        raise TypeError(f"serve.run() takes an Application (deployment.bind(...)), got {type(target).__name__}.")
    if not isinstance(name, str) or not name:
        raise ValueError(f"The application's name must be a non-empty string, got {name!r}.")
    if route_prefix is not None and (not isinstance(route_prefix, str) or not route_prefix.startswith("/")):
        raise ValueError(f"route_prefix must start with '/', got {route_prefix!r}.")
    ingress, specs = build(target, name)
    if not blocking:
        return _deploy(name, route_prefix, ingress, specs, _blocking)
    try:
        _deploy(name, route_prefix, ingress, specs, _blocking)
        threading.Event().wait()  # serve until interrupted (Ctrl-C, or a notebook's interrupt)
    except KeyboardInterrupt:
        # Serve stops with the interrupt, which goes on (as Ray's does): a script ends as
        # interrupted, a notebook cell shows it, and no handle to a stopped application is returned.
        shutdown()
        raise


def _deploy(name: str, route_prefix, ingress: str, specs: list, wait: bool) -> DeploymentHandle:
    controller = _controller(required=False)
    if controller is None or ember.get(controller.http_address.remote()) is None:
        start()
        controller = _controller()
    ember.get(controller.deploy_application.remote(name, route_prefix, ingress, specs))
    if wait:
        status = ember.get(controller.wait_for_application.remote(name, DEPLOY_TIMEOUT_S))
        if status.get("status") == "DEPLOY_FAILED":
            raise RuntimeError(f"Deploying application {name!r} failed: {status.get('message')}")
    return DeploymentHandle(ingress, name)


def status() -> ServeStatus:
    """Every application's status, with its deployments' statuses and replica counts by state."""
    controller = _controller(required=False)
    if controller is None:
        return ServeStatus()
    raw = ember.get(controller.status.remote())
    applications = {}
    for name, app in raw["applications"].items():
        deployments = {
            dep: DeploymentStatusOverview(**{**d, "status": DeploymentStatus(d["status"])})
            for dep, d in app["deployments"].items()
        }
        applications[name] = ApplicationStatusOverview(
            ApplicationStatus(app["status"]),
            app["message"],
            app["last_deployed_time_s"],
            deployments,
            app["route_prefix"],
        )
    proxies = {"head": raw["proxy"]} if raw.get("proxy") else {}
    return ServeStatus(proxies, applications)


def delete(name: str, _blocking: bool = True) -> None:
    """Delete the application ``name``: its replicas finish what they are doing and stop."""
    controller = _controller(required=False)
    if controller is None:
        return
    ember.get(controller.delete_application.remote(name))
    if _blocking:
        ember.get(controller.wait_for_application.remote(name, DEPLOY_TIMEOUT_S, True))


def shutdown() -> None:
    """Delete every application and stop Serve's controller and proxy: nothing of Serve is left."""
    if not ember.is_initialized():
        return
    controller = _controller(required=False)
    if controller is not None:
        try:
            ember.get(controller.shutdown.remote(), timeout=60)
        finally:
            ember.kill(controller)
    routing.reset()


def get_app_handle(name: str) -> DeploymentHandle:
    """A handle to the ingress deployment of the running application ``name``."""
    controller = _controller()
    app = ember.get(controller.status.remote())["applications"].get(name)
    if app is None:
        raise RayServeException(f"Application {name!r} does not exist.")
    return DeploymentHandle(app["ingress"], name)


def get_deployment_handle(deployment_name: str, app_name: str | None = None) -> DeploymentHandle:
    """A handle to ``deployment_name`` of ``app_name`` (by default the application this code runs in,
    inside a replica, or the only application)."""
    if app_name is None:
        if serve_context._replica_context is not None:
            app_name = serve_context._replica_context.app_name
        else:
            apps = ember.get(_controller().status.remote())["applications"]
            if len(apps) != 1:
                raise RayServeException("Give app_name: there is not exactly one application.")
            app_name = next(iter(apps))
    apps = ember.get(_controller().status.remote())["applications"]
    if app_name not in apps or deployment_name not in apps[app_name]["deployments"]:
        raise RayServeException(f"Deployment {deployment_name!r} in application {app_name!r} does not exist.")
    return DeploymentHandle(deployment_name, app_name)
