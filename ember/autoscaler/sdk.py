"""Ray's import path for ``request_resources`` (``ray.autoscaler.sdk``)."""

from ember.autoscaler import request_resources

__all__ = ["request_resources"]
