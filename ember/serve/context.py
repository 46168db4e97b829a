"""What code inside a replica can ask about where it runs (``serve.get_replica_context()``) and about
the request it serves (``serve.get_multiplexed_model_id()``)."""

import contextvars
import dataclasses

from ember.serve.exceptions import RayServeException

CONTROLLER_NAME = "SERVE_CONTROLLER_ACTOR"
PROXY_NAME = "SERVE_PROXY_ACTOR"
SERVE_NAMESPACE = "serve"


@dataclasses.dataclass
class ReplicaContext:
    """The application, deployment and replica a piece of code runs in, and the replica's object."""

    app_name: str
    deployment: str
    replica_tag: str
    servable_object: object = None

    @property
    def replica_id(self) -> str:
        return self.replica_tag


@dataclasses.dataclass
class RequestContext:
    route: str = ""
    request_id: str = ""
    app_name: str = ""
    multiplexed_model_id: str = ""


_replica_context: ReplicaContext | None = None
_NO_REQUEST = RequestContext()
request_context: contextvars.ContextVar = contextvars.ContextVar("serve_request", default=None)


def set_replica_context(context: ReplicaContext | None) -> None:
    global _replica_context
    _replica_context = context


def get_replica_context() -> ReplicaContext:
    """The context of the replica this code runs in; raises RayServeException anywhere else."""
    if _replica_context is None:
        raise RayServeException("get_replica_context() may only be called from within a Serve replica.")
    return _replica_context


def get_multiplexed_model_id() -> str:
    """The model id the current request asked for (``handle.options(multiplexed_model_id=...)`` or the
    ``serve_multiplexed_model_id`` HTTP header); "" when it named none."""
    return (request_context.get() or _NO_REQUEST).multiplexed_model_id
