"""Exported functions and classes, and each job's configuration, as a process sees them.

A driver pickles a remote function or actor class once and stores it in the head's KV under its key;
workers fetch it by key on first use. A job's configuration (the driver's import path, runtime_env
variables, namespace) is stored the same way, under ``job:<id>``.
"""

import sys

import msgpack

from ember.runtime import protocol
from ember.runtime.serialization import deserialize
from ember.runtime.task_context import current_task

_NO_JOB = {"sys_path": [], "env_vars": {}, "namespace": None}


class FunctionTable:
    """``client.export``, ``load_function``, ``job_config`` and ``current_namespace`` (bound on the
    client). ``request`` is the client's: called from user threads, never the I/O thread."""

    def __init__(self, client):
        self.client = client
        self._exported: set = set()  # keys this process stored already
        self._functions: dict = {}  # key -> the function or class, unpickled
        self._jobs: dict = {}  # job id -> its configuration

    def export(self, key: bytes, payload: bytes) -> None:
        """Store a pickled function or class in the head's KV once; workers fetch it by key."""
        if key in self._exported:
            return
        self.client.request("head", {"op": protocol.KV_PUT, "key": key, "overwrite": False}, [payload])
        self._exported.add(key)

    def load_function(self, key: bytes, job_id: bytes | None = None):
        function = self._functions.get(key)
        if function is None:
            if job_id is not None:
                self.job_config(job_id)  # puts the driver's import path on ours first
            reply, frames = self.client.request("head", {"op": protocol.KV_GET, "key": key})
            if not reply.found or not frames:
                raise RuntimeError(f"function {key.hex()} was not exported to the cluster")
            function = self._functions[key] = deserialize(frames[0])
        return function

    def current_namespace(self) -> str | None:
        """The namespace of the job we work for: the driver's, or that of the task running here."""
        context = current_task.get()
        if context is not None and context.job_id and self.client.kind == "worker":
            return self.job_config(context.job_id).get("namespace")
        return self.client.namespace

    def job_config(self, job_id: bytes) -> dict:
        """The job's ``sys_path`` and ``env_vars`` (fetched from the head once per job)."""
        config = self._jobs.get(job_id)
        if config is None:
            reply, frames = self.client.request("head", {"op": protocol.KV_GET, "key": b"job:" + job_id})
            config = msgpack.unpackb(frames[0]) if reply.found and frames else dict(_NO_JOB)
            for path in config["sys_path"]:
                if path not in sys.path:
                    sys.path.append(path)
            self._jobs[job_id] = config
        return config
