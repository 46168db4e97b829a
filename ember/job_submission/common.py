"""What a job is, apart from any I/O: its status, its record, and the rules that move it.

A job's record lives in the head's KV under ``jobsub:<submission id>`` (JSON), written by the
dashboard when it is submitted and by its supervisor actor as it runs; so it survives the client
that submitted it, and the dashboard process too.
"""

import enum
import json
import re
import secrets
import signal
from dataclasses import asdict, dataclass, field, fields

KEY_PREFIX = b"jobsub:"
# A job's output, mirrored in the head's KV when its supervisor is on another node than the dashboard:
# jobsub_log:<submission id>:<byte offset of the chunk, 16 digits>.
LOG_PREFIX = b"jobsub_log:"
SUPERVISOR_NAMESPACE = "_ember_jobs"
RUNTIME_ENV_VARIABLE = "EMBER_JOB_RUNTIME_ENV"  # the job's runtime_env, JSON, for ember.init() in its driver
SUBMISSION_ID_VARIABLE = "EMBER_JOB_SUBMISSION_ID"
_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class JobStatus(str, enum.Enum):
    """A job's state, as Ray's ``JobStatus``."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    def __str__(self):
        return self.value

    def is_terminal(self) -> bool:
        """Whether the job has ended and will not change again."""
        return self in (JobStatus.STOPPED, JobStatus.SUCCEEDED, JobStatus.FAILED)


@dataclass
class JobInfo:
    """A submitted job's record, with Ray's ``JobInfo``/``JobDetails`` field names."""

    status: JobStatus
    entrypoint: str
    submission_id: str = ""
    message: str | None = None
    error_type: str | None = None
    start_time: int | None = None  # milliseconds since the epoch, as Ray
    end_time: int | None = None
    metadata: dict = field(default_factory=dict)
    runtime_env: dict = field(default_factory=dict)
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None
    entrypoint_resources: dict | None = None
    driver_exit_code: int | None = None
    driver_pid: int | None = None
    driver_node_id: str | None = None
    log_path: str | None = None
    log_in_head: bool = False  # its output is mirrored in the head's KV (its driver ran on another node)

    def to_json(self) -> dict:
        """The REST form (Ray's JobDetails: ``type`` and ``job_id`` besides the record)."""
        body = asdict(self)
        body["status"] = str(self.status)
        body.update(type="SUBMISSION", job_id=self.submission_id)
        return body

    @classmethod
    def from_json(cls, body: dict) -> "JobInfo":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in body.items() if k in known}
        values["status"] = JobStatus(values["status"])
        return cls(**values)

    def encode(self) -> bytes:
        return json.dumps(self.to_json()).encode()

    @classmethod
    def decode(cls, data: bytes) -> "JobInfo":
        return cls.from_json(json.loads(data))


def log_chunk_key(submission_id: str, offset: int) -> bytes:
    return LOG_PREFIX + f"{submission_id}:{offset:016d}".encode()


def log_chunk_prefix(submission_id: str) -> bytes:
    return LOG_PREFIX + f"{submission_id}:".encode()


def chunks_from(keys: list, offset: int) -> tuple[list, int]:
    """Of a job's log chunk keys, the ones that hold bytes from ``offset`` on (in order), and the offset
    of the first of them (so the caller skips ``offset - first`` bytes of it)."""
    starts = sorted((int(key.rsplit(b":", 1)[1]), key) for key in keys)
    chosen = [(start, key) for start, key in starts if start <= offset][-1:]
    chosen += [(start, key) for start, key in starts if start > offset]
    return [key for _, key in chosen], (chosen[0][0] if chosen else offset)


def new_submission_id() -> str:
    return f"embersubmit_{secrets.token_hex(8)}"


def check_submission(body: dict) -> dict:
    """The fields of a submit request, checked (Ray's names); raises ValueError or TypeError saying
    which one is wrong. Returns them with defaults filled in."""
    if not isinstance(body, dict):
        raise TypeError("A job submission is a JSON object.")
    unknown = set(body) - {
        "entrypoint",
        "submission_id",
        "job_id",
        "runtime_env",
        "metadata",
        "entrypoint_num_cpus",
        "entrypoint_num_gpus",
        "entrypoint_memory",
        "entrypoint_resources",
    }
    if unknown:
        raise ValueError(f"Unknown job submission fields: {sorted(unknown)}.")
    entrypoint = body.get("entrypoint")
    if not isinstance(entrypoint, str) or not entrypoint.strip():
        raise ValueError("entrypoint must be a non-empty shell command string.")
    submission_id = body.get("submission_id") or body.get("job_id") or new_submission_id()
    if not isinstance(submission_id, str) or not _ID_PATTERN.match(submission_id):
        raise ValueError(f"submission_id must be 1-128 letters, digits, '_', '.' or '-', got {submission_id!r}.")
    runtime_env = body.get("runtime_env") or {}
    check_runtime_env(runtime_env)
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise TypeError("metadata must map strings to strings.")
    amounts = {}
    for name in ("entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_memory"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ValueError(f"{name} must be a non-negative number, got {value!r}.")
        amounts[name] = value
    resources = body.get("entrypoint_resources")
    if resources is not None:
        if not isinstance(resources, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
            for k, v in resources.items()
        ):
            raise ValueError("entrypoint_resources must map resource names to non-negative numbers.")
        if {"CPU", "GPU"} & set(resources):
            raise ValueError("Use entrypoint_num_cpus/entrypoint_num_gpus, not entrypoint_resources, for CPU and GPU.")
    return {
        "entrypoint": entrypoint,
        "submission_id": submission_id,
        "runtime_env": runtime_env,
        "metadata": metadata,
        "entrypoint_resources": resources,
        **amounts,
    }


def check_runtime_env(runtime_env) -> None:
    """A job's runtime_env takes what tasks' and actors' do (``env_vars``, ``working_dir``, ``py_modules``,
    ``pip``, ``excludes``); raises TypeError or ValueError naming the field that is wrong."""
    from ember.runtime.runtime_env import check_runtime_env as check_fields

    check_fields(runtime_env)


def ended(returncode: int, stop_requested: bool) -> tuple[JobStatus, str]:
    """The final status of a job whose driver exited with ``returncode`` (negative: killed by that
    signal, as subprocess reports it), and the message to show."""
    if stop_requested:
        return JobStatus.STOPPED, "Job was intentionally stopped."
    if returncode == 0:
        return JobStatus.SUCCEEDED, "Job finished successfully."
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return JobStatus.FAILED, f"Job entrypoint was killed by {name}."
    return JobStatus.FAILED, f"Job entrypoint command failed with exit code {returncode}."


def can_delete(status: JobStatus) -> bool:
    """Only an ended job can be deleted (as Ray)."""
    return status.is_terminal()
