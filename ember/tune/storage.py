"""The experiment's files under ``storage_path/name``: each trial's ``result.json`` (one JSON line
per result, appended: the cost of a result is its own line) and ``experiment_state.pkl`` (the
controller's state, the param_space and configs). The state file is rewritten whole, atomically (a
tmp file, fsync, ``os.replace``: a crash leaves the old or the new state, never half of one), at
once after a change a restore needs exactly (``Experiment.changes``: a trial's status, a new trial,
a checkpoint, a failure), and for results alone at most every ``STATE_PERIOD_S`` (``SavePolicy``).
A restore takes each trial's results logged after the state file from its result.json
(``Experiment.catch_up``); a line cut short by the crash is dropped.

The state is pickled on the controller's thread (a consistent snapshot) and written by a writer
thread, newest first: the controller never waits on the disk, and a burst of changes costs one
write. A finished trial is pickled once and its bytes reused by later snapshots (``Trial``'s
``__reduce_ex__``), so a snapshot's cost hardly grows with the trials that ended. ``close()`` waits
for the last state to be on disk."""

import json
import os
import threading
import time

import cloudpickle

from ember.train import checkpoint as ckpt

STATE_FILE = "experiment_state.pkl"
RESULT_FILE = "result.json"
VERSION = 2  # 2: trials count their logged results (num_results), for catch_up
STATE_PERIOD_S = 5.0


class SavePolicy:
    """Whether to rewrite the state file now, apart from any I/O. ``changes`` and ``results`` are the
    experiment's counters; ``final`` is fit()'s last save (always written)."""

    def __init__(self, period_s: float = STATE_PERIOD_S):
        if not period_s >= 0:
            raise ValueError(f"period_s must be >= 0, got {period_s!r}")
        self.period_s = period_s
        self.written: tuple | None = None  # (changes, results) in the file
        self.written_at = 0.0

    def due(self, changes: int, results: int, now: float, final: bool = False) -> bool:
        if final or self.written is None or changes != self.written[0]:
            return True
        return results != self.written[1] and now - self.written_at >= self.period_s

    def wrote(self, changes: int, results: int, now: float) -> None:
        self.written = (changes, results)
        self.written_at = now


def join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if "://" in base else os.path.join(base, name)


class ExperimentStorage:
    def __init__(self, filesystem, path: str, policy: SavePolicy | None = None, clock=time.monotonic):
        self.filesystem = filesystem
        self.path = path
        self.policy = policy or SavePolicy()
        self.clock = clock
        self.logs: dict = {}  # trial path -> open file (local storage)
        self.writes = 0
        ckpt.makedirs(filesystem, path)
        self._changed = threading.Condition()
        self._pending: bytes | None = None  # the newest state not written yet
        self._writing = False
        self._closing = False
        self._error: BaseException | None = None
        self._writer: threading.Thread | None = None

    def save_state(self, state: dict, force: bool = False) -> bool:
        """Write ``state`` (with its ``experiment``) if the policy says it is due; True if it will be.
        An experiment not running (``started`` None: fit()'s end or interrupt) is always written. A
        failure of an earlier write is raised here."""
        experiment = state["experiment"]
        now = self.clock()
        final = force or experiment.started is None
        if not self.policy.due(experiment.changes, experiment.num_results, now, final):
            return False
        data = cloudpickle.dumps({"version": VERSION, **state})
        with self._changed:
            self._raise_failure()
            self._pending = data
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="ember-tune-state", daemon=True)
                self._writer.start()
            self._changed.notify_all()
        self.policy.wrote(experiment.changes, experiment.num_results, now)
        self.writes += 1
        return True

    def flush(self) -> None:
        """Wait until the newest state is on disk; raise if writing it failed."""
        with self._changed:
            while self._pending is not None or self._writing:
                self._changed.wait()
            self._raise_failure()

    def _raise_failure(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise OSError(f"ember.tune could not write the experiment state under {self.path}: {error}") from error

    def _write_loop(self) -> None:
        while True:
            with self._changed:
                while self._pending is None and not self._closing:
                    self._changed.wait()
                if self._pending is None:
                    return  # closed, and everything written
                data, self._pending, self._writing = self._pending, None, True
            try:
                self._write(data)
            except BaseException as error:  # noqa: BLE001 - reported to the controller at its next save
                with self._changed:
                    self._error = error
            finally:
                with self._changed:
                    self._writing = False
                    self._changed.notify_all()

    def _write(self, data: bytes) -> None:
        target = join(self.path, STATE_FILE)
        if self.filesystem is None:
            tmp = f"{target}.tmp-{os.getpid()}"
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        else:
            with self.filesystem.open_output_stream(target) as out:
                out.write(data)

    def append_result(self, trial_path: str, result: dict) -> None:
        line = json.dumps(result, default=repr) + "\n"
        if self.filesystem is not None:
            # Remote storage: an append per result would cost a round trip each; a restore there has
            # the state file's results (at most STATE_PERIOD_S behind) and no history.
            return
        log = self.logs.get(trial_path)
        if log is None:
            os.makedirs(trial_path, exist_ok=True)
            target = join(trial_path, RESULT_FILE)
            _drop_torn_tail(target)
            log = self.logs[trial_path] = open(target, "a")  # noqa: SIM115 - kept open for appends
        log.write(line)
        log.flush()

    def close(self) -> None:
        for log in self.logs.values():
            log.close()
        self.logs.clear()
        try:
            self.flush()
        finally:
            with self._changed:
                self._closing = True
                self._changed.notify_all()
            if self._writer is not None:
                self._writer.join()
                self._writer = None


def load_state(filesystem, path: str) -> dict:
    target = join(path, STATE_FILE)
    if filesystem is None:
        if not os.path.exists(target):
            raise FileNotFoundError(f"No Tune experiment at {path!r} (no {STATE_FILE}).")
        with open(target, "rb") as source:
            state = cloudpickle.loads(source.read())
    else:
        with filesystem.open_input_stream(target) as source:
            state = cloudpickle.loads(source.read())
    if state.get("version") != VERSION:
        raise ValueError(f"{target} was written by another version of ember.tune ({state.get('version')}).")
    experiment = state["experiment"]
    if filesystem is None:
        for trial in experiment.trials:
            experiment.catch_up(trial, read_results(trial.path))
    return state


def read_results(trial_path: str) -> list:
    """A trial's results from its result.json (those written before a crash)."""
    from ember.tune.experiment import Metrics

    target = join(trial_path, RESULT_FILE)
    if "://" in trial_path or not os.path.exists(target):
        return []
    out = []
    with open(target) as source:
        for line in source:
            if not line.endswith("\n"):
                break  # the last line, cut short by a crash (its JSON may even parse: "1" of "12")
            try:
                out.append(Metrics(json.loads(line)))
            except json.JSONDecodeError:
                break  # a line cut short by a crash
    return out


def _drop_torn_tail(target: str) -> None:
    """Cut a last line left unfinished by a crash, so that the next result starts a line of its own
    (glued to the fragment, it would be unreadable and end every later read there)."""
    try:
        with open(target, "rb+") as log:
            size = log.seek(0, os.SEEK_END)
            if size == 0:
                return
            log.seek(size - 1)
            if log.read(1) == b"\n":
                return
            # Scan back in blocks for the last newline: the fragment is at most one result long.
            end = size
            while end > 0:
                start = max(end - 65536, 0)
                log.seek(start)
                block = log.read(end - start)
                cut = block.rfind(b"\n")
                if cut >= 0:
                    log.truncate(start + cut + 1)
                    return
                end = start
            log.truncate(0)
    except FileNotFoundError:
        return


def exists(filesystem, path: str) -> bool:
    target = join(path, STATE_FILE)
    if filesystem is None:
        return os.path.exists(target)
    import pyarrow.fs as pafs

    return filesystem.get_file_info(target).type != pafs.FileType.NotFound


def copy_checkpoint(checkpoint, target: str):
    """A copy of ``checkpoint`` at ``target`` on the same filesystem (a PBT exploit's own copy, which
    the donor's checkpoint pruning cannot take away)."""
    if checkpoint.filesystem is None:
        import shutil

        shutil.copytree(checkpoint.path, target, dirs_exist_ok=True)
    else:
        import pyarrow.fs as pafs

        pafs.copy_files(
            checkpoint.path,
            target,
            source_filesystem=checkpoint.filesystem,
            destination_filesystem=checkpoint.filesystem,
        )
    return ckpt.Checkpoint(target, checkpoint.filesystem)
