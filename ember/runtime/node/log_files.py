"""A node manager's own log files: what ``ember.util.state.list_logs``/``get_log`` and the dashboard's
Logs page read on every node, through two ops of the node manager::

    client --log_files--> node manager: LogTable.listing()   (names, kinds, pids, sizes: a stat each)
    client --log_read---> node manager: LogTable.resolve() -> read thread: read_part() -> loop: reply

Several node managers on one machine may share one session directory, and so one ``logs/``: a node
lists and reads only the files it knows it wrote, its process's log (``cluster-<pid>.log``) and each
worker's (``worker-<ns>.log``, recorded as the worker starts and kept after it exits). A request names
a file of that table (or the pid of its process), never a path: the name is looked up, not joined to
the directory, so nothing a client sends leads out of it. Reads are bounded (``LOG_READ_MAX`` bytes an
answer; a whole file is read in parts) and run on a thread, so a slow disk never holds up the loop.
"""

import concurrent.futures
import dataclasses
import os

from ember.runtime.bounded import EndedCache, cap_from_env
from ember.runtime.messages import LOG_READ_MAX

NODE_MANAGER = "node_manager"  # the node's process (with the head too on the head's node): Ray's "raylet"
WORKER = "worker"
# Exited workers whose logs stay listed, as the head caps what it keeps about ended things (bounded.py).
ENDED_WORKER_LOGS = ("EMBER_MAXIMUM_EXITED_WORKER_LOG_COUNT", 1000)


class NoSuchLogFile(ValueError):
    """The node has no log file of that name (or none of a process with that pid)."""


@dataclasses.dataclass
class LogEntry:
    name: str
    kind: str
    pid: int
    process: object = None  # a WorkerProcess (its returncode says whether it runs), None: this process

    @property
    def alive(self) -> bool:
        return self.process is None or self.process.returncode is None


class LogTable:
    """Which files of ``log_dir`` are this node's, and the part of one that a read asks for. No I/O
    apart from ``listing``'s stat of each file, so the lookups are testable on their own."""

    def __init__(self, log_dir: str, own_pid: int, ended_cap: int | None = None):
        self.log_dir = log_dir
        self.entries: dict[str, LogEntry] = {}  # name -> entry, oldest first
        self.ended = EndedCache(ended_cap or cap_from_env(ENDED_WORKER_LOGS))
        self.add(LogEntry(f"cluster-{own_pid}.log", NODE_MANAGER, own_pid))

    def add(self, entry: LogEntry) -> None:
        if not entry.name or os.path.basename(entry.name) != entry.name:
            raise ValueError(f"a log file is named by its name in the log directory, got {entry.name!r}")
        self.entries[entry.name] = entry

    def add_worker(self, log_path: str, process) -> None:
        """Record a worker just started: ``process`` (a WorkerProcess) writes to ``log_path``."""
        self.add(LogEntry(os.path.basename(log_path), WORKER, process.pid, process))
        if len(self.entries) > 2 * self.ended.capacity:  # bounded even when nobody lists the files
            self.forget_ended()

    def forget_ended(self) -> None:
        """Past the cap of exited workers' logs, the oldest leave the table (the files stay on disk)."""
        for entry in [e for e in self.entries.values() if not e.alive and e.name not in self.ended]:
            for name in self.ended.add(entry.name):
                self.entries.pop(name, None)

    def resolve(self, name: str | None = None, pid: int | None = None) -> LogEntry:
        """The entry named ``name``, or the newest of the process ``pid``; NoSuchLogFile otherwise."""
        if name is not None:
            entry = self.entries.get(name)
            if entry is None or (pid is not None and entry.pid != pid):
                raise NoSuchLogFile(f"this node has no log file {name!r}" + (f" of pid {pid}" if pid else ""))
            return entry
        if pid is None:
            raise ValueError("name a log file or the pid of its process")
        for entry in reversed(self.entries.values()):
            if entry.pid == pid:
                return entry
        raise NoSuchLogFile(f"this node has no log file of a process with pid {pid}")

    def path(self, entry: LogEntry) -> str:
        return os.path.join(self.log_dir, entry.name)

    def listing(self) -> list:
        """This node's log files that exist: name, kind, pid, size in bytes, whether the process runs."""
        self.forget_ended()
        rows = []
        for entry in self.entries.values():
            try:
                size = os.stat(self.path(entry), follow_symlinks=False).st_size
            except OSError:
                continue  # removed by someone, or not written yet
            rows.append({"name": entry.name, "kind": entry.kind, "pid": entry.pid, "size": size, "alive": entry.alive})
        return rows


def read_range(size: int, tail: int | None, offset: int | None, length: int) -> tuple[int, int]:
    """(start, count) of the bytes to send from a file of ``size`` bytes: its last ``tail`` bytes,
    else up to ``length`` from ``offset``; never more than LOG_READ_MAX."""
    if tail is not None:
        count = min(tail, size, LOG_READ_MAX)
        return size - count, count
    start = min(offset or 0, size)
    return start, min(length, LOG_READ_MAX, size - start)


def read_part(path: str, tail: int | None, offset: int | None, length: int) -> tuple[int, int, bytes]:
    """(file size, start, bytes) of one bounded read; never follows a link planted where a log was."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        size = os.fstat(fd).st_size
        start, count = read_range(size, tail, offset, length)
        return size, start, os.pread(fd, count, start)
    finally:
        os.close(fd)


class LogFiles:
    """The node manager's handlers of ``log_files`` and ``log_read``, answering through ``service``
    (its ``reply``/``reply_error``; reads come back to its ``loop`` from the read thread)."""

    def __init__(self, log_dir: str, service, own_pid: int | None = None):
        self.table = LogTable(log_dir, os.getpid() if own_pid is None else own_pid)
        self.service = service
        self.pool = None  # one read thread, started with the first read

    def add_worker(self, log_path: str, process) -> None:
        self.table.add_worker(log_path, process)

    def on_log_files(self, identity, msg, frames):
        return {"files": self.table.listing()}

    def on_log_read(self, identity, msg, frames):
        try:
            entry = self.table.resolve(msg.name, msg.pid)
        except ValueError as error:  # a wrong name is the caller's, not ours: no traceback in our log
            if msg.rid is not None:
                self.refuse(identity, msg.rid, error)
            return None
        if msg.rid is None:
            return None
        path = self.table.path(entry)
        loop = self.service.loop
        if loop is None:  # not attached to a loop (a node manager driven by hand): read here
            self._done(identity, msg.rid, entry, _run(read_part, path, msg.tail, msg.offset, msg.length))
            return None
        if self.pool is None:
            self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ember-log-read")
        future = self.pool.submit(read_part, path, msg.tail, msg.offset, msg.length)
        future.add_done_callback(lambda done: loop.call_soon(self._done, identity, msg.rid, entry, done))
        return None

    def _done(self, identity, rid, entry: LogEntry, future) -> None:
        error = future.exception()
        if error is None:
            size, start, data = future.result()
            body = {"filename": entry.name, "file_size": size, "start": start, "running": entry.alive}
            self.service.reply(identity, rid, body, [data])
        elif isinstance(error, FileNotFoundError):
            self.refuse(identity, rid, NoSuchLogFile(f"log file {entry.name!r} was removed from this node"))
        else:
            self.service.reply_error(identity, rid, error)

    def refuse(self, identity, rid, error: ValueError) -> None:
        # Sent as a ValueError: the clients raise that type (core_client._REMOTE_ERRORS).
        self.service.reply_error(identity, rid, ValueError(str(error)))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


def _run(fn, *args) -> concurrent.futures.Future:
    """``fn(*args)`` as a finished future (what the read thread would give)."""
    future = concurrent.futures.Future()
    try:
        future.set_result(fn(*args))
    except Exception as error:
        future.set_exception(error)
    return future
