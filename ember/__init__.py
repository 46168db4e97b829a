"""Ember: a Ray-compatible distributed runtime that lives in Jupyter.

``import ember as ray`` runs ordinary Ray core programs. This module only re-exports the public API;
the libraries (``ember.data``, ...) are imported on first use, as Ray's are, so that ``import ember``
stays fast and does not need their dependencies (pyarrow, pandas, ...).
"""

import importlib as _importlib

from ember import exceptions, util
from ember.actor import ActorClass, ActorHandle, method
from ember.api import (
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    init,
    is_initialized,
    kill,
    nodes,
    put,
    remote,
    shutdown,
    wait,
)
from ember.kernel_ext import load_ipython_extension, unload_ipython_extension
from ember.remote_function import RemoteFunction
from ember.runtime.client.object_ref import DynamicObjectRefGenerator, ObjectRef, ObjectRefGenerator
from ember.runtime_context import get_gpu_ids, get_runtime_context
from ember.util.timeline import timeline

__version__ = "0.1.0"

_LIBRARIES = ("data", "rllib", "serve", "train", "tune")


def __getattr__(name: str):
    # ``ray.data.range(...)`` works after a bare ``import ray``: the library loads on first use.
    if name in _LIBRARIES:
        return _importlib.import_module(f"ember.{name}")
    raise AttributeError(f"module 'ember' has no attribute {name!r}")


__all__ = [
    "ActorClass",
    "ActorHandle",
    "DynamicObjectRefGenerator",
    "ObjectRef",
    "ObjectRefGenerator",
    "RemoteFunction",
    "available_resources",
    "cancel",
    "cluster_resources",
    "data",
    "exceptions",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "load_ipython_extension",
    "method",
    "nodes",
    "put",
    "remote",
    "rllib",
    "serve",
    "shutdown",
    "timeline",
    "train",
    "tune",
    "unload_ipython_extension",
    "util",
    "wait",
]
