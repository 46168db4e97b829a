"""Jobs: a shell command run as a driver on the cluster, supervised by a detached actor.

Data flow::

    JobSubmissionClient --HTTP--> dashboard: JobManager.submit
        --KV put jobsub:<id> (PENDING)--> head
        --ember.init() once; create detached actor "_job_supervisor_<id>"--> JobSupervisor.run
            /bin/sh -c <entrypoint>, in its own process group, EMBER_ADDRESS set: the job's driver
            stdout+stderr --> <runtime dir>/jobs/<id>.log
            --KV put jobsub:<id> (RUNNING, then SUCCEEDED/FAILED/STOPPED)--> head; then the actor exits
    stop: JobManager.stop --JobSupervisor.stop--> SIGTERM to the group, SIGKILL after a grace period;
          the driver's exit makes the cluster clean up its tasks and non-detached actors.

The supervisor runs on the dashboard's node when it can (a soft node affinity), so the dashboard
reads the log file directly, also after the job ended.
"""

import logging
import os
import signal
import subprocess
import sys
import threading
import time

from ember.exceptions import RuntimeEnvSetupError
from ember.job_submission.common import (
    KEY_PREFIX,
    RUNTIME_ENV_VARIABLE,
    SUBMISSION_ID_VARIABLE,
    SUPERVISOR_NAMESPACE,
    JobInfo,
    JobStatus,
    check_submission,
    chunks_from,
    ended,
    log_chunk_key,
    log_chunk_prefix,
)
from ember.runtime import protocol
from ember.runtime.runtime_env import ACTOR_SETUP_FAILED, upload_local

logger = logging.getLogger(__name__)

STOP_GRACE_VARIABLE = "EMBER_JOB_STOP_WAIT_S"
DEFAULT_STOP_GRACE_S = 3.0
_JOB_DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "job_driver.py")
# A worker's own wiring: a job's driver must find its cluster through EMBER_ADDRESS, as any driver.
_WORKER_VARIABLES = ("EMBER_NODE_MANAGER", "EMBER_HEAD", "EMBER_NODE_ID", "EMBER_NODE_HOST", "EMBER_SESSION_DIR")


LOG_MIRROR_S = 0.3
LOG_CHUNK_BYTES = 1 << 20
LOG_HEAD_MAX_VARIABLE = "EMBER_JOB_LOG_HEAD_MAX_BYTES"
# The head keeps the mirror in memory: what a job prints beyond this stays only on its node.
DEFAULT_LOG_HEAD_MAX = 64 << 20


def supervisor_name(submission_id: str) -> str:
    return f"_job_supervisor_{submission_id}"


def log_path(submission_id: str) -> str:
    from ember.runtime.runtime_dir import private_subdir

    return os.path.join(private_subdir("jobs"), f"{submission_id}.log")


def stop_grace() -> float:
    try:
        return max(0.0, float(os.environ.get(STOP_GRACE_VARIABLE, DEFAULT_STOP_GRACE_S)))
    except ValueError:
        return DEFAULT_STOP_GRACE_S


def driver_env(environ: dict, head_address: str, info: JobInfo) -> dict:
    """The environment of a job's driver: ours (a worker's, in the job's runtime env) without a worker's
    wiring, the cluster's address, the job's env_vars, and its runtime_env as JSON for ``ember.init()``
    to apply. The env's working_dir and py_modules (unpacked by the node) go on PYTHONPATH, and the
    interpreter the job's workers run, the pip env's when it has one, comes first on PATH."""
    import json

    env = {
        k: v
        for k, v in environ.items()
        if k not in _WORKER_VARIABLES and not k.startswith(("EMBER_WORKER_", "EMBER_RUNTIME_ENV"))
    }
    env["EMBER_ADDRESS"] = head_address
    runtime_env = info.runtime_env or {}
    # `python` in an entrypoint means the cluster's interpreter (its virtual environment), as for Ray's jobs.
    python_dir = os.path.dirname(sys.executable)
    if runtime_env.get("pip") and environ.get("VIRTUAL_ENV"):
        python_dir = os.path.join(environ["VIRTUAL_ENV"], "bin")
    env["PATH"] = os.pathsep.join(filter(None, [python_dir, env.get("PATH", "")]))
    paths = environ.get("EMBER_RUNTIME_ENV_PATHS")
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [paths, env.get("PYTHONPATH", "")]))
    env[SUBMISSION_ID_VARIABLE] = info.submission_id
    env.update(runtime_env.get("env_vars") or {})
    if runtime_env:
        env[RUNTIME_ENV_VARIABLE] = json.dumps(runtime_env)
    return env


def _kv_put(key: bytes, value: bytes) -> None:
    from ember.connection import connected_client

    connected_client().request("head", {"op": protocol.KV_PUT, "key": key, "overwrite": True}, [value])


class LogMirror:
    """Copies a job's log file, as it grows, into the head's KV in chunks (``put(key, data)``), so a
    dashboard on another node can serve it, also after the job and its supervisor ended."""

    def __init__(self, submission_id: str, path: str, put, limit: int):
        self.submission_id, self.path, self.put, self.limit = submission_id, path, put, limit
        self.offset = 0
        self.capped = False
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="ember-job-log-mirror", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopped.wait(LOG_MIRROR_S):
            try:
                self._drain()
            except Exception as error:  # the head is briefly unreachable: the next pass copies what is left
                logger.warning("copying job %s's log to the head failed: %s", self.submission_id, error)

    def _drain(self) -> None:
        while not self.capped:
            with open(self.path, "rb") as file:
                file.seek(self.offset)
                data = file.read(min(LOG_CHUNK_BYTES, self.limit - self.offset))
            if data:
                self.put(log_chunk_key(self.submission_id, self.offset), data)
                self.offset += len(data)
            if self.offset >= self.limit:
                note = f"\n[ember: the head keeps {self.limit} bytes of a job's output; the rest is in {self.path}]\n"
                self.put(log_chunk_key(self.submission_id, self.offset), note.encode())
                self.capped = True
            if not data:
                return

    def close(self) -> None:
        """Copy what is left (the driver has exited) and stop."""
        self.stopped.set()
        self.thread.join()
        try:
            self._drain()
        except Exception as error:  # the job's end must still be recorded
            logger.warning("copying the end of job %s's log to the head failed: %s", self.submission_id, error)


def _log_head_max() -> int:
    try:
        return max(0, int(os.environ.get(LOG_HEAD_MAX_VARIABLE, DEFAULT_LOG_HEAD_MAX)))
    except ValueError:
        return DEFAULT_LOG_HEAD_MAX


class JobSupervisor:
    """One per job (a detached, threaded actor): ``run`` starts the driver and waits for it, ``stop``
    ends it from another thread of the actor."""

    def __init__(self, submission_id: str, head_address: str, dashboard_node_id: str | None = None):
        self.submission_id = submission_id
        self.head_address = head_address
        self.dashboard_node_id = dashboard_node_id
        self.mirror: LogMirror | None = None
        self.life_write = -1
        self.key = KEY_PREFIX + submission_id.encode()
        self.lock = threading.Lock()
        self.process: subprocess.Popen | None = None
        self.stop_requested = False

    def run(self, record: dict) -> str:
        """Run the job to its end; record each state in the head's KV; then end this actor."""
        import ember
        from ember.actor import exit_actor
        from ember.runtime.runtime_dir import open_private

        info = JobInfo.from_json(record)
        info.log_path = log_path(self.submission_id)
        info.driver_node_id = ember.get_runtime_context().get_node_id()
        # The dashboard reads the log file where it runs; on another node it reads the head's copy.
        info.log_in_head = bool(self.dashboard_node_id) and info.driver_node_id != self.dashboard_node_id
        # This actor runs in the job's runtime env: its node unpacked the working_dir and made it our cwd.
        working_dir = os.getcwd() if (info.runtime_env or {}).get("working_dir") else None
        fd = open_private(info.log_path)
        try:
            with self.lock:
                if self.stop_requested:
                    return self._finish(info, JobStatus.STOPPED, "Job was stopped before it started.", None)
                # The entrypoint's parent (job_driver.py) kills its group when this process dies: it
                # reads a pipe whose write end only we hold (not inheritable), and sees EOF then.
                life_read, self.life_write = os.pipe()
                try:
                    self.process = subprocess.Popen(
                        [sys.executable, "-I", _JOB_DRIVER, str(life_read), "--", "/bin/sh", "-c", info.entrypoint],
                        stdin=subprocess.DEVNULL,
                        stdout=fd,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group: stop signals the whole of it
                        env=driver_env(dict(os.environ), self.head_address, info),
                        cwd=working_dir,
                        close_fds=True,
                        pass_fds=(life_read,),
                    )
                finally:
                    os.close(life_read)
        except OSError as error:
            return self._finish(info, JobStatus.FAILED, f"The entrypoint could not start: {error}", None)
        finally:
            os.close(fd)
        if info.log_in_head:
            self.mirror = LogMirror(self.submission_id, info.log_path, _kv_put, _log_head_max())
        info.status, info.driver_pid = JobStatus.RUNNING, self.process.pid
        info.message = "Job is currently running."
        _kv_put(self.key, info.encode())
        returncode = self.process.wait()
        # What the driver left behind in its group (a backgrounded child) goes with it.
        self._signal_group(signal.SIGKILL)
        os.close(self.life_write)
        status, message = ended(returncode, self.stop_requested)
        self._finish(info, status, message, returncode)
        exit_actor()

    def _finish(self, info: JobInfo, status: JobStatus, message: str, returncode) -> str:
        if self.mirror is not None:
            self.mirror.close()  # the whole output is in the head before the job reads as ended
        info.status, info.message, info.driver_exit_code = status, message, returncode
        info.end_time = int(time.time() * 1000)
        if status == JobStatus.FAILED:
            info.error_type = "JOB_ENTRYPOINT_COMMAND_ERROR" if returncode else "JOB_SUPERVISOR_ERROR"
        _kv_put(self.key, info.encode())
        return str(status)

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, grace: float) -> bool:
        """SIGTERM the driver's process group, then SIGKILL it after ``grace`` seconds."""
        with self.lock:
            self.stop_requested = True
            process = self.process
        if process is None or process.poll() is not None:
            return False
        self._signal_group(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
        return True


class JobManager:
    """The dashboard's side of jobs: records in the head's KV (through ``head``, a HeadClient), and
    supervisors created through a driver connection opened on the first submission."""

    def __init__(self, head, head_address: str):
        self.head = head
        self.head_address = head_address
        self.connect_lock = threading.Lock()
        self.connected = False
        self.runs: dict = {}  # submission id -> the ref of its supervisor's run(), while the job has not ended

    def connect(self) -> None:
        """Open this process's driver connection to the cluster, once (the first submission, or the
        first look at Serve's status)."""
        import ember

        with self.connect_lock:
            if not self.connected:
                ember.init(address=self.head_address, namespace=SUPERVISOR_NAMESPACE, log_to_driver=False)
                self.connected = True

    def submit(self, body: dict) -> str:
        """Record the job (PENDING) and start its supervisor; returns its submission id. ValueError
        when the request is invalid or the id is taken."""
        import ember
        from ember.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        spec = check_submission(body)
        submission_id = spec["submission_id"]
        # A working_dir or py_modules path here is one on the dashboard's machine (a client uploads its
        # own first and sends package URIs): packed and stored in the head once, by content hash.
        spec["runtime_env"] = upload_local(spec["runtime_env"], self.store_package)
        info = JobInfo(
            status=JobStatus.PENDING,
            entrypoint=spec["entrypoint"],
            submission_id=submission_id,
            message="Job is waiting for its supervisor to start.",
            start_time=int(time.time() * 1000),
            metadata=spec["metadata"],
            runtime_env=spec["runtime_env"],
            entrypoint_num_cpus=spec["entrypoint_num_cpus"],
            entrypoint_num_gpus=spec["entrypoint_num_gpus"],
            entrypoint_resources=spec["entrypoint_resources"],
        )
        if not self.head.kv_put(KEY_PREFIX + submission_id.encode(), info.encode(), overwrite=False):
            raise ValueError(f"Job with submission_id {submission_id} already exists. Choose another submission_id.")
        try:
            self.connect()
            options = dict(
                name=supervisor_name(submission_id),
                namespace=SUPERVISOR_NAMESPACE,
                lifetime="detached",
                max_concurrency=4,
                num_cpus=spec["entrypoint_num_cpus"] or 0,
                num_gpus=spec["entrypoint_num_gpus"] or 0,
                resources=spec["entrypoint_resources"] or {},
                scheduling_strategy=NodeAffinitySchedulingStrategy(
                    ember.get_runtime_context().get_node_id(), soft=True
                ),
            )
            if spec["entrypoint_memory"]:
                options["memory"] = spec["entrypoint_memory"]
            if spec["runtime_env"]:
                # As Ray's: the supervisor runs in the job's env, so the entrypoint starts in its working_dir
                # and venv, and a setup that fails (pip's message) fails the supervisor, and so the job.
                options["runtime_env"] = spec["runtime_env"]
            supervisor = (
                ember.remote(JobSupervisor)
                .options(**options)
                .remote(submission_id, self.head_address, ember.get_runtime_context().get_node_id())
            )
            self.runs[submission_id] = supervisor.run.remote(info.to_json())
        except Exception as error:
            info.status, info.message = JobStatus.FAILED, f"The job's supervisor could not start: {error}"
            info.error_type, info.end_time = "JOB_SUPERVISOR_ERROR", int(time.time() * 1000)
            self.head.kv_put(KEY_PREFIX + submission_id.encode(), info.encode())
        return submission_id

    def info(self, submission_id: str) -> JobInfo | None:
        data = self.head.kv_get(KEY_PREFIX + submission_id.encode())
        if data is None:
            return None
        info = JobInfo.decode(data)
        if info.status.is_terminal():
            self.runs.pop(submission_id, None)
        else:
            info = self._check_run(submission_id, info)
        if info.status == JobStatus.RUNNING and self.connected and self._supervisor(submission_id) is None:
            # Its supervisor died without recording an end (its worker or node was killed): the job is lost.
            latest = self.head.kv_get(KEY_PREFIX + submission_id.encode())
            info = JobInfo.decode(latest) if latest else info
            if info.status == JobStatus.RUNNING:
                info.status, info.error_type = JobStatus.FAILED, "JOB_SUPERVISOR_ACTOR_DIED"
                info.message, info.end_time = "The job's supervisor actor died.", int(time.time() * 1000)
                self.head.kv_put(KEY_PREFIX + submission_id.encode(), info.encode())
        return info

    def _check_run(self, submission_id: str, info: JobInfo) -> JobInfo:
        """A job whose supervisor's run() failed without recording an end (its runtime env could not be
        set up, or its actor died) is FAILED, with the error that says why."""
        import ember

        run = self.runs.get(submission_id)
        if run is None or not ember.wait([run], timeout=0)[0]:
            return info
        del self.runs[submission_id]
        try:
            ember.get(run, timeout=10)
            return info
        except Exception as error:
            latest = self.head.kv_get(KEY_PREFIX + submission_id.encode())
            info = JobInfo.decode(latest) if latest else info
            if info.status.is_terminal():
                return info
            text = str(error)
            setup_failed = isinstance(error, RuntimeEnvSetupError) or ACTOR_SETUP_FAILED in text
            info.status, info.end_time = JobStatus.FAILED, int(time.time() * 1000)
            info.error_type = "RUNTIME_ENV_SETUP_FAILURE" if setup_failed else "JOB_SUPERVISOR_ACTOR_DIED"
            info.message = f"The job's supervisor failed: {text}"
            self.head.kv_put(KEY_PREFIX + submission_id.encode(), info.encode())
            return info

    def store_package(self, key: bytes, data: bytes) -> None:
        """Keep a runtime env package in the head's KV (``key``: its KV key, made of its content hash)."""
        self.head.kv_put(key, data, overwrite=False)

    def list(self) -> list:
        jobs = []
        for key in self.head.kv_keys(KEY_PREFIX):
            info = self.info(key[len(KEY_PREFIX) :].decode())
            if info is not None:
                jobs.append(info)
        return sorted(jobs, key=lambda job: job.start_time or 0)

    def _supervisor(self, submission_id: str):
        import ember

        try:
            return ember.get_actor(supervisor_name(submission_id), namespace=SUPERVISOR_NAMESPACE)
        except ValueError:
            return None

    def stop(self, submission_id: str) -> bool:
        """Stop a job that has not ended; returns whether it was running (False: it had ended).
        KeyError when there is no such job."""
        import ember

        info = self.info(submission_id)
        if info is None:
            raise KeyError(submission_id)
        if info.status.is_terminal():
            return False
        self.connect()
        supervisor = self._supervisor(submission_id)
        if info.status == JobStatus.PENDING and supervisor is not None:
            # It may be waiting for resources, and would take the stop call only once it exists: kill it.
            ember.kill(supervisor)
            supervisor = None
        if supervisor is not None:
            try:
                ember.get(supervisor.stop.remote(stop_grace()), timeout=stop_grace() + 30)
            except Exception:
                pass  # it ended on its own meanwhile: its record says how
        latest = self.info(submission_id)
        if latest is not None and not latest.status.is_terminal() and supervisor is None:
            latest.status, latest.message = JobStatus.STOPPED, "Job was intentionally stopped."
            latest.end_time = int(time.time() * 1000)
            self.head.kv_put(KEY_PREFIX + submission_id.encode(), latest.encode())
        return True

    def delete(self, submission_id: str) -> bool:
        """Forget an ended job and its logs. KeyError: no such job; ValueError: it has not ended."""
        info = self.info(submission_id)
        if info is None:
            raise KeyError(submission_id)
        if not info.status.is_terminal():
            raise ValueError(f"Job {submission_id} has not ended (it is {info.status}); stop it first.")
        self.head.kv_del(KEY_PREFIX + submission_id.encode())
        for key in self.head.kv_keys(log_chunk_prefix(submission_id)):
            self.head.kv_del(key)
        if info.log_path and not info.log_in_head:
            try:
                os.unlink(info.log_path)
            except OSError:
                pass
        return True

    def logs(self, submission_id: str, offset: int = 0) -> tuple[str, int]:
        """The job's output from byte ``offset``, and the offset after it. KeyError: no such job."""
        info = self.info(submission_id)
        if info is None:
            raise KeyError(submission_id)
        if info.log_in_head:
            keys, start = chunks_from(self.head.kv_keys(log_chunk_prefix(submission_id)), offset)
            data = b"".join(self.head.kv_get(key) or b"" for key in keys)[offset - start :]
            return data.decode(errors="replace"), offset + len(data)
        path = info.log_path or log_path(submission_id)
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return "", offset
        return data.decode(errors="replace"), offset + len(data)

    def close(self) -> None:
        if self.connected:
            import ember

            ember.shutdown()
