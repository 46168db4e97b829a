"""ember.serve: Ray Serve's API on Ember's core — deployments as replica actors behind an HTTP proxy
(uvicorn + starlette) and Python handles, reconciled by a detached controller actor.

``serve.run`` returns once the application runs, so a notebook cell never blocks on it.
"""

from ember.serve import exceptions
from ember.serve.api import (
    ApplicationStatus,
    DeploymentStatus,
    delete,
    get_app_handle,
    get_deployment_handle,
    run,
    shutdown,
    start,
    status,
)
from ember.serve.batching import batch
from ember.serve.config import AutoscalingConfig, DeploymentConfig, HTTPOptions
from ember.serve.context import ReplicaContext, get_multiplexed_model_id, get_replica_context
from ember.serve.deployment import Application, Deployment, deployment, ingress
from ember.serve.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator
from ember.serve.monitor import monitor
from ember.serve.multiplex import multiplexed

__all__ = [
    "Application",
    "ApplicationStatus",
    "AutoscalingConfig",
    "Deployment",
    "DeploymentConfig",
    "DeploymentHandle",
    "DeploymentResponse",
    "DeploymentResponseGenerator",
    "DeploymentStatus",
    "HTTPOptions",
    "ReplicaContext",
    "batch",
    "delete",
    "deployment",
    "exceptions",
    "get_app_handle",
    "get_deployment_handle",
    "get_multiplexed_model_id",
    "get_replica_context",
    "ingress",
    "monitor",
    "multiplexed",
    "run",
    "shutdown",
    "start",
    "status",
]
