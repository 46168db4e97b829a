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


BURST = """
import itertools, json, os, tempfile
from ember import tune

def burst(config):
    # Trials a < 2 report 50 times and end; the others report as fast as they can until the stop
    # file exists (made only after the driver is killed), with a checkpoint every 400 results.
    begin = 0
    start = tune.get_checkpoint()
    if start is not None:
        with start.as_directory() as directory:
            begin = json.load(open(os.path.join(directory, "s.json")))["step"] + 1
    with open(config["log"], "a") as out:
        out.write(f"start {tune.get_context().get_trial_id()} {begin}\\n")
    for step in itertools.count(begin):
        if config["a"] < 2 and step == 50:
            return
        if config["a"] >= 2 and os.path.exists(config["stop"]) and step >= begin + 10:
            return
        if step % 400 == 0:
            with tempfile.TemporaryDirectory() as directory:
                json.dump({"step": step}, open(os.path.join(directory, "s.json"), "w"))
                tune.report({"step": step}, checkpoint=tune.Checkpoint.from_directory(directory))
        else:
            tune.report({"step": step})
"""


def test_restore_after_a_driver_killed_in_a_burst_of_results(cluster, tmp_path):
    from ember.tune import storage

    exp = tmp_path / "exp"
    log, stop = tmp_path / "log", tmp_path / "stop"
    code = textwrap.dedent(BURST) + textwrap.dedent(
        f"""
        import ember
        ember.init(num_cpus=2)
        tune.Tuner(
            burst, param_space={{"a": tune.grid_search([0, 1, 2, 3]), "log": {str(log)!r}, "stop": {str(stop)!r}}},
            tune_config=tune.TuneConfig(max_concurrent_trials=2),
            run_config=tune.RunConfig(name="exp", storage_path={str(tmp_path)!r}, verbose=0)).fit()
        """
    )
    env = dict(os.environ)
    env.pop("EMBER_ADDRESS", None)
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:

        def bursting():
            # Trials 0 and 1 ended, and a bursting trial has logged results past a checkpoint.
            if not (exp / storage.STATE_FILE).exists():
                return False
            trials = storage.load_state(None, str(exp))["experiment"].trials
            ended = [t for t in trials if t.config["a"] < 2 and t.status == "TERMINATED"]
            return len(ended) == 2 and any(t.config["a"] >= 2 and t.iteration > 900 for t in trials)

        wait_for(bursting, timeout=90, message="two trials ended and a third in its burst")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.communicate()
    namespace: dict = {}
    exec(BURST, namespace)
    # The SIGKILL may cut the last line of a result.json; cut one for certain.
    experiment = storage.load_state(None, str(exp))["experiment"]
    torn = next(t for t in experiment.trials if t.config["a"] >= 2 and t.iteration > 900)
    with open(os.path.join(torn.path, storage.RESULT_FILE), "a") as out:
        out.write('{"step": 12')
    state = storage.load_state(None, str(exp))
    trials = {t.config["a"]: t for t in state["experiment"].trials}
    for a in (0, 1):  # finished before the kill: kept whole
        assert trials[a].status == "TERMINATED" and trials[a].iteration == 50
        assert trials[a].last_result["step"] == 49 and trials[a].last_result["done"]
    # The bursting trial is caught up from its result.json, the torn fragment dropped.
    logged = storage.read_results(torn.path)
    caught = trials[torn.config["a"]]
    assert caught.iteration == caught.num_results == len(logged) > 900
    assert caught.last_result == logged[-1] and caught.last_result["step"] == len(logged) - 1
    assert caught.checkpoint is not None and caught.checkpoint_iteration % 400 == 1
    before = _starts(tmp_path)

    stop.write_text("")
    grid = tune.Tuner.restore(str(exp), namespace["burst"]).fit()
    assert grid.num_terminated == 4 and grid.num_errors == 0
    assert [r.config["a"] for r in grid] == [0, 1, 2, 3]
    assert [r.metrics["step"] for r in grid][:2] == [49, 49]
    restarted = {trial_id: int(begin) for trial_id, begin in _starts(tmp_path)[len(before) :]}
    assert not {r.metrics["trial_id"] for r in grid[:2]} & set(restarted)  # finished trials not rerun
    assert restarted[caught.trial_id] == caught.checkpoint_iteration  # the step after its latest checkpoint
    # The torn trial's log reads to its end again: the fragment was cut before new lines went on.
    text = (tmp_path / "exp" / os.path.basename(torn.path) / storage.RESULT_FILE).read_text()
    again = storage.read_results(torn.path)
    assert len(again) == text.count("\n") > len(logged)
    assert again[: len(logged)] == logged and again[-1]["step"] == grid[torn.config["a"]].metrics["step"]
