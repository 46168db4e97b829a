"""What keeps ember.tune's cost per trial flat: a finished trial is pickled once into the
experiment state (its bytes reused by every later snapshot until it changes), and a finished
trial's actor is killed without waiting for the head's answer (``kill_nowait``)."""

import os

import cloudpickle
import psutil
import pytest

import ember
from ember import tune
from ember.actor import kill_nowait
from ember.exceptions import ActorDiedError
from ember.train.checkpoint import Checkpoint
from ember.tune.experiment import ERROR, PENDING, RUNNING, TERMINATED
from tests.conftest import wait_for
from tests.test_tune_state import experiment


def reloaded(exp):
    return cloudpickle.loads(cloudpickle.dumps(exp))


def test_a_finished_trial_is_pickled_once_and_its_bytes_reused_by_later_snapshots():
    exp = experiment({"a": tune.grid_search([1, 2, 3])})
    one, two, three = exp.to_start()
    exp.on_result(one.trial_id, {"score": 5})
    exp.on_trial_end(one.trial_id)
    exp.on_result(two.trial_id, {"score": 7})
    reloaded(exp)
    frozen = one.__dict__["_frozen"]
    assert isinstance(frozen, bytes) and two.__dict__.get("_frozen") is None  # only finished trials
    copy = reloaded(exp)
    assert one.__dict__["_frozen"] is frozen  # not pickled again
    first = copy.trials[0]
    assert copy.by_id[one.trial_id] is first  # one object, however many references
    assert (first.status, first.config, first.last_result, first.best, first.iteration) == (
        TERMINATED,
        {"a": 1},
        one.last_result,
        one.best,
        1,
    )
    assert first.last_result["done"] is True and first.history == []
    # A live trial is pickled as it is now, every time.
    exp.on_result(two.trial_id, {"score": 9})
    assert reloaded(exp).trials[1].iteration == 2 and reloaded(exp).trials[1].status == RUNNING


def test_a_change_to_a_finished_trial_reaches_the_next_snapshot(tmp_path):
    exp = experiment({"a": tune.grid_search([1, 2])}, max_failures=0)
    one, two = exp.to_start()
    exp.on_result(one.trial_id, {"score": 1}, None, 0.0)
    exp.on_trial_end(one.trial_id)
    exp.on_error(two.trial_id, ValueError("boom"))
    reloaded(exp)
    # checkpoint_at_end of a stopped trial comes after it is TERMINATED.
    (tmp_path / "ckpt").mkdir()
    exp.on_checkpoint(one.trial_id, Checkpoint(str(tmp_path / "ckpt")))
    copy = reloaded(exp)
    assert copy.trials[0].checkpoint is not None and copy.trials[0].checkpoint.path == str(tmp_path / "ckpt")
    assert copy.trials[1].status == ERROR and "boom" in copy.trials[1].error
    exp.prepare_restore(resume_unfinished=True, resume_errored=False, restart_errored=True)
    copy = reloaded(exp)
    assert copy.trials[1].status == PENDING and copy.trials[1].error is None
    # A trial thawed from a snapshot keeps its bytes until it changes too.
    restored = copy.trials[0]
    assert restored.__dict__["_frozen"] is not None
    restored.status = PENDING
    assert restored.__dict__["_frozen"] is None and reloaded(copy).trials[0].status == PENDING


def test_kill_nowait_kills_the_actor_and_fails_its_calls(cluster):
    @ember.remote(num_cpus=1)
    class Sleeper:
        def pid(self):
            return os.getpid()

        def wait(self):
            import time

            time.sleep(60)

    actor = Sleeper.remote()
    pid = ember.get(actor.pid.remote())
    pending = actor.wait.remote()
    kill_nowait(actor)
    with pytest.raises(ActorDiedError):
        ember.get(pending, timeout=30)
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    # The next actor of the same size starts (its CPU was freed by the kill), and a second kill of
    # the dead actor is harmless.
    kill_nowait(actor)
    other = Sleeper.remote()
    assert ember.get(other.pid.remote(), timeout=30) != pid
    ember.kill(other)
    with pytest.raises(TypeError):
        kill_nowait("not an actor")
