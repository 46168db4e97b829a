"""The runtime envs a node manager knows: which are ready, which are being set up, which failed.

An env with only ``env_vars`` is ready at once. One with packages or pip requirements is set up by a
``runtime_env_setup`` process (one per env at a time, never on the node manager's loop); the
workers asked for it meanwhile are counted and started when it is ready. A failure is kept for the
node's life, so later requests for that env fail at once instead of running pip again.

Setups are keyed by the part of an env that needs one (packages and pip lines): envs that differ
only in ``env_vars`` share a set-up working_dir or venv, and a new one of them starts its workers at once.
"""

import json
import os
import subprocess
import sys
import time

from ember.runtime.message_fields import runtime_env_dict
from ember.runtime.runtime_dir import open_private
from ember.runtime.runtime_env import env_key

NEEDS_SETUP = ("working_dir", "py_modules", "pip")


class EnvSetups:
    def __init__(self, head_address: str, log_dir: str):
        self.head_address = head_address
        self.log_dir = log_dir
        self.specs: dict[str, dict] = {"": {}}  # env key -> resolved env
        self.setup_of: dict[str, str] = {"": ""}  # env key -> setup key ("" needs none)
        self.ready: dict[str, dict] = {"": {"cwd": None, "paths": [], "python": None}}  # by setup key
        self.errors: dict[str, str] = {}  # by setup key
        self.pending: dict[str, list] = {}  # setup key -> env keys of the workers to start once it is ready
        self.running: dict[str, tuple] = {}  # setup key -> (process, result path)

    def learn(self, env: dict | None) -> str:
        """The key of a resolved env a request carries, remembered so workers can be started for it."""
        env = runtime_env_dict(env)
        key = env_key(env)
        if key not in self.specs:
            self.specs[key] = env
            self.setup_of[key] = env_key({field: env[field] for field in NEEDS_SETUP if env.get(field)})
        return key

    def error_of(self, key: str) -> str | None:
        return self.errors.get(self.setup_of.get(key, ""))

    def want_worker(self, key: str) -> bool:
        """True when a worker for ``key`` can start now; otherwise it is started by ``poll`` later."""
        setup = self.setup_of[key]
        if setup in self.ready:
            return True
        self.pending.setdefault(setup, []).append(key)
        if setup not in self.running:
            result = os.path.join(self.log_dir, f"runtime_env-{setup}-{time.time_ns()}.json")
            log_path = os.path.join(self.log_dir, f"runtime_env-{setup}.log")
            log = os.fdopen(open_private(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab")
            request = json.dumps({"env": self.specs[key], "head": self.head_address})
            try:
                process = subprocess.Popen(
                    [sys.executable, "-m", "ember.runtime.node.runtime_env_setup", request, result],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its pip and compilers are stopped with it (see close)
                )
            finally:
                log.close()
            self.running[setup] = (process, result)
        return False

    def poll(self) -> list:
        """Setups that ended: ``[(env key, starts, error or None)]``; ``starts`` workers were waiting."""
        finished = []
        for setup, (process, result_path) in list(self.running.items()):
            if process.poll() is None:
                continue
            del self.running[setup]
            try:
                with open(result_path) as file:
                    result = json.load(file)
                os.unlink(result_path)
            except (OSError, ValueError):
                result = {"ok": False, "error": f"the runtime env setup process exited with {process.returncode}"}
            if result.get("ok"):
                self.ready[setup] = {name: result.get(name) for name in ("cwd", "paths", "python")}
            else:
                self.errors[setup] = result.get("error") or "unknown error"
            waiting: dict[str, int] = {}
            for key in self.pending.pop(setup, []):
                waiting[key] = waiting.get(key, 0) + 1
            finished += [(key, starts, self.errors.get(setup)) for key, starts in waiting.items()]
        return finished

    def worker_environment(self, key: str) -> tuple:
        """(variables, cwd, python) for a worker of a ready env."""
        spec, ready = self.specs[key], self.ready[self.setup_of[key]]
        variables = dict(spec.get("env_vars") or {})
        if key:
            variables["EMBER_RUNTIME_ENV"] = json.dumps(spec)
            if ready["paths"]:
                variables["EMBER_RUNTIME_ENV_PATHS"] = os.pathsep.join(ready["paths"])
            if ready["python"]:
                venv = os.path.dirname(os.path.dirname(ready["python"]))
                variables["VIRTUAL_ENV"] = venv
                variables["PATH"] = os.path.join(venv, "bin") + os.pathsep + os.environ.get("PATH", "")
        return variables, ready["cwd"], ready["python"]

    def close(self) -> None:
        for process, _ in self.running.values():
            try:
                os.killpg(process.pid, 9)
            except ProcessLookupError:
                pass
            process.wait()
        self.running.clear()
