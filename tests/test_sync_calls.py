"""Synchronous calls (``get(f.remote())``, ``get(actor.m.remote())``) on the path where the waiting
thread leads the client's loop and its submission goes out in the same round, without a wake-up
through the loop's pipe: order, concurrency with other threads, errors, cancellation, releases and
a worker SIGKILLed in the middle of a call."""

import os
import signal
import threading
import time

import pytest

import ember
from ember.exceptions import ActorDiedError, TaskCancelledError
from ember.runtime.client.core_client import current_client
from tests.conftest import wait_for


@ember.remote
class Log:
    def __init__(self):
        self.entries = []

    def add(self, who, i):
        self.entries.append((who, i))
        return len(self.entries)

    def entries_of(self, who):
        return [i for w, i in self.entries if w == who]

    def fail(self, message):
        raise ValueError(message)

    def pid(self):
        return os.getpid()

    def sleep(self, seconds):
        time.sleep(seconds)
        return seconds


@ember.remote
def echo(x):
    return x


@ember.remote
def sleep_task(path):
    with open(path, "w") as f:
        f.write("started")
    time.sleep(60)


def test_sync_actor_calls_from_two_threads_keep_each_callers_order(cluster):
    # Both threads lead the loop in turn (or wait on the condition while the other leads); a lost
    # wake-up would hang a get, which the timeout turns into a failure.
    log = Log.remote()
    errors = []

    def caller(who):
        try:
            for i in range(300):
                ember.get(log.add.remote(who, i), timeout=30)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=caller, args=(who,)) for who in ("a", "b")]
    for thread in threads:
        thread.start()
    for i in range(300):  # the main thread too, with async calls in between
        ember.get(log.add.remote("main", i), timeout=30)
        log.add.remote("async", i)
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    for who in ("a", "b", "main", "async"):
        assert ember.get(log.entries_of.remote(who), timeout=30) == list(range(300))


def test_sync_tasks_interleaved_with_async_ones_and_waits(cluster):
    for i in range(200):
        pending = [echo.remote(i + k) for k in range(3)]
        assert ember.get(echo.remote(i), timeout=30) == i
        ready, _ = ember.wait(pending, num_returns=3, timeout=30)
        assert ember.get(ready, timeout=30) == [i, i + 1, i + 2]


def test_a_failing_sync_call_raises_and_the_next_one_runs(cluster):
    log = Log.remote()
    for i in range(50):
        with pytest.raises(ValueError, match=f"bad {i}"):
            ember.get(log.fail.remote(f"bad {i}"), timeout=30)
        assert ember.get(log.add.remote("x", i), timeout=30) == i + 1


def test_objects_of_sync_calls_are_released(cluster):
    # The refs dropped after each get queue releases without a wake-up (a nudge): the next round
    # does them before it polls, so the owner's table stays small however long the loop runs.
    client = current_client()
    before = len(client.objects.entries)
    for i in range(2000):
        assert ember.get(echo.remote(i), timeout=30) == i
    wait_for(lambda: len(client.objects.entries) <= before + 5, message="the owner's table to shrink")


def test_a_sync_get_of_a_task_cancelled_from_another_thread_raises(cluster, tmp_path):
    marker = tmp_path / "started"
    ref = sleep_task.remote(str(marker))
    wait_for(marker.exists, message="the task to start")
    threading.Timer(0.2, ember.cancel, (ref,)).start()
    with pytest.raises(TaskCancelledError):
        ember.get(ref, timeout=30)
    assert ember.get(echo.remote("after"), timeout=30) == "after"


def test_a_sync_call_whose_actor_is_sigkilled_mid_call_raises_actor_died(cluster):
    log = Log.remote()
    pid = ember.get(log.pid.remote(), timeout=30)
    ref = log.sleep.remote(30)
    threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
    with pytest.raises(ActorDiedError):  # the death ends the wait, not the timeout (GetTimeoutError)
        ember.get(ref, timeout=30)
    assert ember.get(echo.remote("alive"), timeout=30) == "alive"  # the driver's loop still works
