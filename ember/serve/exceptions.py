"""Serve's exceptions, under Ray's names (``ray.serve.exceptions``)."""

from ember.exceptions import EmberError


class RayServeException(EmberError):
    """A Serve API was used wrongly, or Serve cannot do what was asked."""


class BackPressureError(RayServeException):
    """A request was refused because the deployment's queue (``max_queued_requests``) is full.

    Over HTTP the proxy answers 503 with this message."""

    def __init__(self, deployment: str = "", num_queued_requests: int = 0, max_queued_requests: int = 0):
        self.deployment = deployment
        self.num_queued_requests = num_queued_requests
        self.max_queued_requests = max_queued_requests
        super().__init__(
            f"Request dropped due to backpressure: deployment {deployment!r} has {num_queued_requests} queued "
            f"requests, its max_queued_requests is {max_queued_requests}."
        )

    def __reduce__(self):
        return BackPressureError, (self.deployment, self.num_queued_requests, self.max_queued_requests)


class DeploymentUnavailableError(RayServeException):
    """The deployment a handle points at does not exist (any more)."""


class RequestCancelledError(RayServeException):
    """The request was cancelled (``DeploymentResponse.cancel()``) before it finished."""
