"""ember.tune's experiment state on disk: a driver SIGKILLed mid-experiment leaves one that
Tuner.restore finishes (finished trials kept, unfinished ones resumed from their checkpoints), and
a KeyboardInterrupt in fit() releases every trial actor and leaves it restorable."""

import os
import signal
import subprocess
import sys
import textwrap

from ember import tune
from tests.conftest import wait_for

TRAINABLE = """
import json, os, tempfile, time
from ember import tune

def slow(config):
    log = config["log"]
    start = tune.get_checkpoint()
    begin = 0
    if start is not None:
        with start.as_directory() as directory:
            begin = json.load(open(os.path.join(directory, "s.json")))["step"] + 1
    with open(log, "a") as out:
        out.write(f"start {tune.get_context().get_trial_id()} {begin}\\n")
    for step in range(begin, 4):
        if config["a"] >= 2:
            time.sleep(0.3)  # the later trials are still running when the driver dies
        with tempfile.TemporaryDirectory() as directory:
            json.dump({"step": step}, open(os.path.join(directory, "s.json"), "w"))
            tune.report({"step": step, "a": config["a"]}, checkpoint=tune.Checkpoint.from_directory(directory))
"""


def _driver(tmp_path, body: str) -> str:
    return (
        textwrap.dedent(TRAINABLE)
        + textwrap.dedent(
            f"""
        import ember
        ember.init(num_cpus=2)
        tuner = tune.Tuner(
            slow, param_space={{"a": tune.grid_search([0, 1, 2, 3]), "log": {str(tmp_path / "log")!r}}},
            tune_config=tune.TuneConfig(max_concurrent_trials=2),
            run_config=tune.RunConfig(name="exp", storage_path={str(tmp_path)!r}, verbose=0))
        """
        )
        + textwrap.dedent(body)
    )


def _starts(tmp_path) -> list:
    path = tmp_path / "log"
    return [line.split()[1:] for line in path.read_text().splitlines()] if path.exists() else []


def _trainable():
    namespace: dict = {}
    exec(TRAINABLE, namespace)
    return namespace["slow"]


def test_restore_after_a_sigkilled_driver(cluster, tmp_path):
    env = dict(os.environ)
    env.pop("EMBER_ADDRESS", None)
    process = subprocess.Popen(
        [sys.executable, "-c", _driver(tmp_path, "tuner.fit()")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Kill once trials 0 and 1 finished and a later one has reported a checkpoint.
        def ready():
            state = tmp_path / "exp" / "experiment_state.pkl"
            if not state.exists():
                return False
            trials = {
                t.config["a"]: t
                for t in tune.Tuner.restore(str(tmp_path / "exp"), _trainable())._restored["experiment"].trials
            }
            return all(trials.get(a) and trials[a].status == "TERMINATED" for a in (0, 1)) and any(
                trials.get(a) and trials[a].checkpoint is not None and trials[a].status != "TERMINATED" for a in (2, 3)
            )

        wait_for(ready, timeout=60, message="two trials finished and a third checkpointed")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.communicate()
    before = _starts(tmp_path)
    assert tune.Tuner.can_restore(str(tmp_path / "exp"))
    grid = tune.Tuner.restore(str(tmp_path / "exp"), _trainable()).fit()
    assert len(grid) == 4 and grid.num_terminated == 4 and grid.num_errors == 0
    assert [r.metrics["step"] for r in grid] == [3, 3, 3, 3]
    assert [r.config["a"] for r in grid] == [0, 1, 2, 3]
    after = _starts(tmp_path)[len(before) :]
    started_again = {trial_id: int(begin) for trial_id, begin in after}
    finished_before = {r.metrics["trial_id"] for r in grid[:2]}
    assert not finished_before & set(started_again)  # finished trials were kept, not rerun
    assert any(begin > 0 for begin in started_again.values())  # a trial resumed from its checkpoint
    assert all(r.metrics["training_iteration"] == 4 for r in grid)


def test_keyboard_interrupt_releases_every_actor_and_leaves_it_restorable(tmp_path):
    code = _driver(
        tmp_path,
        f"""
        import os, signal, threading, time
        from ember.util.state import list_actors

        def interrupt():
            while not os.path.exists({str(tmp_path / "log")!r}) or len(open({str(tmp_path / "log")!r}).readlines()) < 3:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=interrupt, daemon=True).start()
        try:
            tuner.fit()
        except KeyboardInterrupt:
            deadline = time.time() + 20
            alive = lambda: [a for a in list_actors() if a.class_name == "TrialActor" and a.state != "DEAD"]
            while alive() and time.time() < deadline:
                time.sleep(0.05)
            print("actors left:", len(alive()))
            print("restorable:", tune.Tuner.can_restore({str(tmp_path / "exp")!r}))
            grid = tune.Tuner.restore({str(tmp_path / "exp")!r}, slow).fit()
            print("after restore:", sorted(r.metrics["step"] for r in grid), grid.num_errors)
        ember.shutdown()
        """,
    )
    env = dict(os.environ)
    env.pop("EMBER_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    out = done.stdout + done.stderr
    assert "actors left: 0" in done.stdout and "restorable: True" in done.stdout, out
    assert "after restore: [3, 3, 3, 3] 0" in done.stdout, out
    assert "Tuner.restore(" in done.stderr, out
