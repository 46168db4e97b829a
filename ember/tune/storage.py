"""The experiment's files under ``storage_path/name``: ``experiment_state.pkl`` (the controller's
state, the param_space and configs; rewritten whole and atomically after every change: a tmp file
then ``os.replace``, so a SIGKILL leaves the old or the new state, never half of one) and each
trial's ``result.json`` (one JSON line per result, appended)."""

import json
import os

import cloudpickle

from ember.train import checkpoint as ckpt

STATE_FILE = "experiment_state.pkl"
RESULT_FILE = "result.json"
VERSION = 1


def join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if "://" in base else os.path.join(base, name)


class ExperimentStorage:
    def __init__(self, filesystem, path: str):
        self.filesystem = filesystem
        self.path = path
        self.logs: dict = {}  # trial path -> open file (local storage)
        ckpt.makedirs(filesystem, path)

    def save_state(self, state: dict) -> None:
        data = cloudpickle.dumps({"version": VERSION, **state})
        target = join(self.path, STATE_FILE)
        if self.filesystem is None:
            tmp = f"{target}.tmp-{os.getpid()}"
            with open(tmp, "wb") as out:
                out.write(data)
            os.replace(tmp, target)
        else:
            with self.filesystem.open_output_stream(target) as out:
                out.write(data)

    def append_result(self, trial_path: str, result: dict) -> None:
        line = json.dumps(result, default=repr) + "\n"
        if self.filesystem is not None:
            # Remote storage: the state file is what restores; an append per result would cost a round trip each.
            return
        log = self.logs.get(trial_path)
        if log is None:
            os.makedirs(trial_path, exist_ok=True)
            log = self.logs[trial_path] = open(join(trial_path, RESULT_FILE), "a")  # noqa: SIM115 - kept open for appends
        log.write(line)
        log.flush()

    def close(self) -> None:
        for log in self.logs.values():
            log.close()
        self.logs.clear()


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
            try:
                out.append(Metrics(json.loads(line)))
            except json.JSONDecodeError:
                break  # a line cut short by a crash
    return out


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
