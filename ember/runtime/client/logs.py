"""Worker log lines: buffered where they are printed, shown by the driver of their job."""

import os
import sys
import threading

from ember.runtime.task_context import current_task


class LogBuffer:
    """Lines printed in this process since the I/O loop last sent them, by job (any thread adds)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._lines: dict[bytes, list] = {}  # job id (b"" when none) -> [stream, name, pid, text, tag]

    def __bool__(self) -> bool:
        return bool(self._lines)

    def add(self, stream: str, text: str, default_job: bytes | None) -> bool:
        """Buffer one line of the running task (or of the process); True when it is the first one
        since the last ``take`` (the loop must be woken to send it)."""
        context = current_task.get()
        job = (context.job_id if context else None) or default_job or b""
        name = context.name if context else "worker"
        tag = context.output_tag if context else None
        with self._lock:
            first = not self._lines
            self._lines.setdefault(job, []).append([stream, name, os.getpid(), text, tag])
        return first

    def take(self) -> dict:
        with self._lock:
            lines, self._lines = self._lines, {}
        return lines


def print_log_line(stream: str, name: str, pid: int, text: str, tag) -> None:
    """The default ``log_handler``: print a worker's line as Ray does, ``(name pid=N) text``."""
    out = sys.stderr if stream == "stderr" else sys.stdout
    out.write(f"({name} pid={pid}) {text}\n")
