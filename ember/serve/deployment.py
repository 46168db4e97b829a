"""``@serve.deployment``, ``Deployment.options()/.bind()`` and the ``Application`` graph they build."""

import dataclasses
import inspect

from ember.serve.config import DeploymentConfig

_CONFIG_NAMES = {f.name for f in dataclasses.fields(DeploymentConfig)}
_UNSET = object()


class Deployment:
    """A class or function that Serve runs as replicas. ``.bind(*args)`` gives an Application that
    ``serve.run`` deploys; ``.options(...)`` a copy with other settings."""

    def __init__(self, target, name: str, config: DeploymentConfig, version: str | None = None):
        if not (inspect.isclass(target) or callable(target)):
            raise TypeError(f"@serve.deployment must decorate a class or a function, got {target!r}.")
        if not isinstance(name, str) or not name or "#" in name:
            raise ValueError(f"A deployment's name must be a non-empty string without '#', got {name!r}.")
        self.func_or_class = target
        self._name = name
        self._config = config
        self._version = version

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str | None:
        return self._version

    @property
    def num_replicas(self):
        return self._config.num_replicas

    @property
    def max_ongoing_requests(self) -> int:
        return self._config.max_ongoing_requests

    @property
    def user_config(self):
        return self._config.user_config

    @property
    def ray_actor_options(self) -> dict:
        return dict(self._config.ray_actor_options)

    @property
    def autoscaling_config(self):
        return self._config.autoscaling_config

    def options(self, *, name=_UNSET, version=_UNSET, **changes) -> "Deployment":
        """A copy of this deployment with some options changed (the names @serve.deployment takes)."""
        unknown = sorted(set(changes) - _CONFIG_NAMES)
        if unknown:
            raise ValueError(f"Invalid option(s) for a deployment: {', '.join(unknown)}.")
        fields = {f.name: getattr(self._config, f.name) for f in dataclasses.fields(DeploymentConfig)}
        if self._config.autoscaling_config is not None and "num_replicas" not in changes:
            fields["num_replicas"] = None
        if "num_replicas" in changes and changes["num_replicas"] not in (None, "auto"):
            fields["autoscaling_config"] = None
        if "autoscaling_config" in changes and changes["autoscaling_config"] is not None:
            fields["num_replicas"] = None if changes.get("num_replicas") != "auto" else "auto"
        fields.update(changes)
        return Deployment(
            self.func_or_class,
            self._name if name is _UNSET else name,
            DeploymentConfig(**fields),
            self._version if version is _UNSET else version,
        )

    def bind(self, *args, **kwargs) -> "Application":
        """This deployment with the arguments for its constructor (a class) or nothing (a function).
        An Application among them reaches the replica as a DeploymentHandle to that deployment."""
        if not inspect.isclass(self.func_or_class) and (args or kwargs):
            raise TypeError(f"The function deployment {self._name!r} takes no bind() arguments.")
        return Application(self, args, kwargs)

    def __call__(self, *args, **kwargs):
        raise RuntimeError(
            f"Deployment {self._name!r} cannot be called directly: use serve.run({self._name}.bind()) and a handle."
        )

    def __repr__(self):
        return f"Deployment(name={self._name!r})"


class Application:
    """A bound deployment (and, through its arguments, the deployments it calls): what serve.run takes."""

    def __init__(self, deployment: Deployment, args: tuple, kwargs: dict):
        self._deployment = deployment
        self._args = args
        self._kwargs = kwargs

    @property
    def deployment(self) -> Deployment:
        return self._deployment

    def __repr__(self):
        return f"Application({self._deployment.name!r})"


def deployment(_func_or_class=None, *, name: str | None = None, version: str | None = None, **options):
    """Turn a class or function into a Serve deployment (Ray's ``@serve.deployment``), with or without
    arguments: ``num_replicas`` (an int or "auto"), ``max_ongoing_requests``, ``max_queued_requests``,
    ``autoscaling_config``, ``user_config``, ``ray_actor_options``, ``health_check_period_s``,
    ``health_check_timeout_s``, ``graceful_shutdown_timeout_s``, ``graceful_shutdown_wait_loop_s``."""
    unknown = sorted(set(options) - _CONFIG_NAMES)
    if unknown:
        raise ValueError(f"Invalid option(s) for @serve.deployment: {', '.join(unknown)}.")
    config = DeploymentConfig(**options)

    def decorate(target):
        return Deployment(target, name or target.__name__, config, version)

    if _func_or_class is not None:
        return decorate(_func_or_class)
    return decorate


def ingress(app):
    """Serve an ASGI app (a FastAPI app) from a deployment class: its routes, under the application's
    route_prefix, call the class's methods that the app's routes were declared with (Ray's ``@serve.ingress``)."""

    def decorate(cls):
        if not inspect.isclass(cls):
            raise TypeError("@serve.ingress decorates a class (then @serve.deployment on top).")
        _picklable_starlette_state()
        cls.__serve_asgi_app__ = app
        return cls

    return decorate


def _picklable_starlette_state() -> None:
    """An app's ``state`` (starlette's State) answers every attribute lookup from its dict, the
    unpickler's ``__setstate__`` lookup included, which recurses before the dict exists: rebuild
    it from its dict instead."""
    import copyreg

    try:
        from starlette.datastructures import State
    except ImportError:
        return
    copyreg.pickle(State, _reduce_state)


def _reduce_state(state):
    return type(state), (dict(state._state),)
