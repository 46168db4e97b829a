"""Deployment, autoscaling and HTTP options: Ray Serve's names, defaults and validation."""

import dataclasses
import math
import numbers

DEFAULT_MAX_ONGOING_REQUESTS = 5
# Options a replica's actor accepts from ``ray_actor_options`` (as Ray Serve lists them).
ACTOR_OPTION_NAMES = {
    "accelerator_type",
    "memory",
    "num_cpus",
    "num_gpus",
    "object_store_memory",
    "resources",
    "runtime_env",
    "label_selector",
}


def _number(name: str, value, minimum: float = 0.0, strict: bool = False, integer: bool = False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or (integer and not isinstance(value, int)):
        raise TypeError(f"{name} must be {'an int' if integer else 'a number'}, got {value!r}.")
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}.")
    return value


@dataclasses.dataclass
class AutoscalingConfig:
    """Ray Serve's autoscaling settings: replicas follow total ongoing requests / target_ongoing_requests,
    clamped to [min_replicas, max_replicas], once the wish has lasted upscale_delay_s / downscale_delay_s."""

    min_replicas: int = 1
    initial_replicas: int | None = None
    max_replicas: int = 1
    target_ongoing_requests: float = 2.0
    metrics_interval_s: float = 10.0
    look_back_period_s: float = 30.0
    smoothing_factor: float = 1.0
    upscale_smoothing_factor: float | None = None
    downscale_smoothing_factor: float | None = None
    upscaling_factor: float | None = None
    downscaling_factor: float | None = None
    downscale_delay_s: float = 600.0
    downscale_to_zero_delay_s: float | None = None
    upscale_delay_s: float = 30.0

    def __post_init__(self):
        _number("min_replicas", self.min_replicas, integer=True)
        _number("max_replicas", self.max_replicas, 1, integer=True)
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas}).")
        if self.initial_replicas is not None:
            _number("initial_replicas", self.initial_replicas, integer=True)
            if not self.min_replicas <= self.initial_replicas <= self.max_replicas:
                raise ValueError(
                    f"initial_replicas ({self.initial_replicas}) must lie between min_replicas "
                    f"({self.min_replicas}) and max_replicas ({self.max_replicas})."
                )
        _number("target_ongoing_requests", self.target_ongoing_requests, 0, strict=True)
        for name in ("metrics_interval_s", "look_back_period_s", "smoothing_factor"):
            _number(name, getattr(self, name), 0, strict=True)
        for name in (
            "upscale_smoothing_factor",
            "downscale_smoothing_factor",
            "upscaling_factor",
            "downscaling_factor",
        ):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name), 0, strict=True)
        for name in ("downscale_delay_s", "upscale_delay_s"):
            _number(name, getattr(self, name))
        if self.downscale_to_zero_delay_s is not None:
            _number("downscale_to_zero_delay_s", self.downscale_to_zero_delay_s)

    @classmethod
    def of(cls, value) -> "AutoscalingConfig | None":
        if value is None or isinstance(value, AutoscalingConfig):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"autoscaling_config must be a dict or an AutoscalingConfig, got {value!r}.")
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"Unknown autoscaling_config option(s): {', '.join(unknown)}.")
        return cls(**value)

    def initial(self) -> int:
        return self.initial_replicas if self.initial_replicas is not None else self.min_replicas

    def upscale_smoothing(self) -> float:
        return self.upscaling_factor or self.upscale_smoothing_factor or self.smoothing_factor

    def downscale_smoothing(self) -> float:
        return self.downscaling_factor or self.downscale_smoothing_factor or self.smoothing_factor


@dataclasses.dataclass
class DeploymentConfig:
    """Everything about a deployment except its code: how many replicas, how much load each takes,
    health checks and shutdown timing."""

    num_replicas: int | str | None = None  # None: 1, or autoscaling's when autoscaling_config is given
    max_ongoing_requests: int = DEFAULT_MAX_ONGOING_REQUESTS
    max_queued_requests: int = -1
    user_config: object = None
    autoscaling_config: AutoscalingConfig | None = None
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0
    graceful_shutdown_timeout_s: float = 20.0
    graceful_shutdown_wait_loop_s: float = 2.0
    ray_actor_options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.num_replicas == "auto":
            # Ray's "auto": autoscale between 1 and 100 replicas, 2 ongoing requests each.
            defaults = {"min_replicas": 1, "max_replicas": 100, "target_ongoing_requests": 2}
            given = self.autoscaling_config
            if isinstance(given, AutoscalingConfig):
                given = dataclasses.asdict(given)
            self.autoscaling_config = AutoscalingConfig.of({**defaults, **(given or {})})
            self.num_replicas = None
        else:
            self.autoscaling_config = AutoscalingConfig.of(self.autoscaling_config)
        if self.num_replicas is not None:
            if self.autoscaling_config is not None:
                raise ValueError("Manually setting num_replicas is not allowed when autoscaling_config is provided.")
            _number("num_replicas", self.num_replicas, integer=True)
        elif self.autoscaling_config is None:
            self.num_replicas = 1
        _number("max_ongoing_requests", self.max_ongoing_requests, 1, integer=True)
        if (
            not isinstance(self.max_queued_requests, int)
            or isinstance(self.max_queued_requests, bool)
            or (self.max_queued_requests < 1 and self.max_queued_requests != -1)
        ):
            raise ValueError(
                f"max_queued_requests must be -1 (no limit) or a positive int, got {self.max_queued_requests!r}."
            )
        _number("health_check_period_s", self.health_check_period_s, 0, strict=True)
        _number("health_check_timeout_s", self.health_check_timeout_s, 0, strict=True)
        _number("graceful_shutdown_timeout_s", self.graceful_shutdown_timeout_s)
        _number("graceful_shutdown_wait_loop_s", self.graceful_shutdown_wait_loop_s, 0, strict=True)
        if not isinstance(self.ray_actor_options, dict):
            raise TypeError(f"ray_actor_options must be a dict, got {self.ray_actor_options!r}.")
        unknown = sorted(set(self.ray_actor_options) - ACTOR_OPTION_NAMES)
        if unknown:
            raise ValueError(
                f"Invalid ray_actor_options {', '.join(map(repr, unknown))}; "
                f"valid: {', '.join(sorted(ACTOR_OPTION_NAMES))}."
            )

    def target_replicas(self) -> int:
        return self.autoscaling_config.initial() if self.autoscaling_config else self.num_replicas


@dataclasses.dataclass
class HTTPOptions:
    """Where the HTTP proxy listens (loopback by default) and what it accepts.

    ``max_body_size`` (bytes; Ember's own) bounds a request's body: larger ones get 413."""

    host: str = "127.0.0.1"
    port: int = 8000
    root_path: str = ""
    request_timeout_s: float | None = None
    keep_alive_timeout_s: int = 5
    max_body_size: int = 100 * 2**20

    def __post_init__(self):
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"host must be a non-empty string, got {self.host!r}.")
        _number("port", self.port, integer=True)
        if self.port > 65535:
            raise ValueError(f"port must be at most 65535, got {self.port}.")
        _number("max_body_size", self.max_body_size, integer=True)
        if self.request_timeout_s is not None:
            _number("request_timeout_s", self.request_timeout_s, 0, strict=True)

    @classmethod
    def of(cls, value) -> "HTTPOptions":
        if value is None:
            return cls()
        if isinstance(value, HTTPOptions):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"http_options must be a dict or an HTTPOptions, got {value!r}.")
        known = {f.name for f in dataclasses.fields(cls)}
        # Ray's options Ember does not need (location, ssl, ...) are accepted and ignored.
        return cls(**{k: v for k, v in value.items() if k in known})


def ceil_replicas(value: float) -> int:
    return int(math.ceil(value - 1e-9))
