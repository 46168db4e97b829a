"""The node's worker pool on a real cluster: kept topped up as actors take workers for good, within
its idle cap, and a killed actor's resources free before its process is reaped."""

import os
import textwrap
import time

import pytest
from conftest import run_driver

# Each test's driver starts with this: a 2-CPU cluster and its live worker processes.
PRELUDE = """
import os, time
import psutil
import ember
from ember import api

ember.init(num_cpus=2)
cluster = psutil.Process(api._cluster_process.pid)

def workers():
    found = set()
    for child in cluster.children():
        try:
            if child.name() == "ember-worker" and child.status() != psutil.STATUS_ZOMBIE:
                found.add(child.pid)
        except psutil.NoSuchProcess:
            pass  # a killed actor's worker, reaped meanwhile
    return found
"""


def test_actor_after_a_kill_starts_on_a_prestarted_worker():
    out = run_driver(
        PRELUDE
        + textwrap.dedent(
            """

        def idle():
            return api._nodes_raw()[0]["workers"]["idle"]

        def wait(condition, what):
            deadline = time.monotonic() + 30
            while not condition():
                if time.monotonic() > deadline:
                    raise SystemExit(f"timed out waiting for {what}")
                time.sleep(0.02)

        @ember.remote(num_cpus=1)
        class Trial:
            def pid(self):
                return os.getpid()

        most_idle = 0
        for round in range(4):
            # Both counts: the head's view of the node can be a heartbeat old (the third actor's
            # grant not in it yet), and its replacement is started a moment after that grant.
            wait(lambda: idle() == 2 and len(workers()) == 2, "two idle workers")
            before = workers()
            actors = [Trial.remote(), Trial.remote()]
            pids = ember.get([a.pid.remote() for a in actors])
            # Both actors run on workers that were started before they were asked for.
            assert set(pids) <= before, (pids, before)
            # Their replacements are started in the background; the pool never holds more idle
            # workers than its cap (the CPU count).
            wait(lambda: idle() == 2 and len(workers() - set(pids)) >= 2, "the pool to be topped up")
            most_idle = max(most_idle, len(workers() - set(pids)))
            # Killed: the CPUs come back when the kill is decided, so a third actor needs no reaping.
            for actor in actors:
                ember.kill(actor)
            third = Trial.remote()
            third_pid = ember.get(third.pid.remote())
            assert third_pid in before | workers()
            ember.kill(third)
            # Gone before the next round counts the pool: a dying worker is no idle one.
            wait(lambda: not ({third_pid, *pids} & workers()), "the killed actors' workers to exit")
        print("most idle", most_idle)
        ember.shutdown()
        """
        ),
        timeout=120,
    )
    most_idle = int(out.stdout.split("most idle")[1])
    assert most_idle == 2


def test_a_new_pool_worker_loads_the_latest_actors_class_ahead(tmp_path):
    # The class's module records every process that imports it: the worker started to replace the
    # one the actor took imports it while idle, before any actor of the class is created on it.
    (tmp_path / "trial_module.py").write_text(
        "import os\n"
        f"with open({str(tmp_path / 'imports')!r}, 'a') as f:\n"
        "    f.write(f'{os.getpid()}\\n')\n"
        "class Trial:\n"
        "    def pid(self):\n"
        "        return os.getpid()\n"
    )
    out = run_driver(
        f"""
        import sys, time
        sys.path.insert(0, {str(tmp_path)!r})
        import ember
        from trial_module import Trial

        ember.init(num_cpus=2)
        actor = ember.remote(num_cpus=1)(Trial).remote()
        pid = ember.get(actor.pid.remote())
        path = {str(tmp_path / "imports")!r}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open(path) as f:
                importers = {{int(line) for line in f}}
            ahead = importers - {{pid, __import__("os").getpid()}}
            if ahead:
                break
            time.sleep(0.02)
        print("ahead", len(ahead))
        ember.shutdown()
        """,
        timeout=120,
    )
    assert "ahead 1" in out.stdout or "ahead 2" in out.stdout, out.stdout


def test_preloading_can_be_turned_off_and_a_bad_setting_is_refused(monkeypatch):
    from ember.runtime.node import worker_pool

    monkeypatch.setenv(worker_pool.PRELOAD_CLASSES, "0")
    assert worker_pool.preload_setting() == 0
    for bad in ("-1", "four"):
        monkeypatch.setenv(worker_pool.PRELOAD_CLASSES, bad)
        with pytest.raises(ValueError, match=worker_pool.PRELOAD_CLASSES):
            worker_pool.preload_setting()


def test_pool_top_up_waits_after_a_grant_unless_a_lease_needs_a_worker():
    # A long delay: the replacement of a granted worker is not forked with the grant (it would
    # compete with the new actor's start), yet a lease that finds no idle worker does not wait for it.
    out = run_driver(
        PRELUDE
        + textwrap.dedent(
            """

        deadline = time.monotonic() + 30
        while api._nodes_raw()[0]["workers"]["idle"] != 2:
            if time.monotonic() > deadline:
                raise SystemExit("timed out waiting for two idle workers")
            time.sleep(0.02)
        before = workers()

        @ember.remote(num_cpus=0.5)
        class Trial:
            def pid(self):
                return os.getpid()

        first = Trial.remote()
        assert ember.get(first.pid.remote(), timeout=30) in before
        print("after one grant", len(workers() - before))
        second = Trial.remote()
        assert ember.get(second.pid.remote(), timeout=30) in before
        # No idle worker is left: the third actor starts the deferred top-ups instead of waiting 60 s.
        third = Trial.remote()
        print("third on a new worker", ember.get(third.pid.remote(), timeout=30) not in before)
        ember.shutdown()
        """
        ),
        timeout=120,
        env={"EMBER_WORKER_TOPUP_DELAY_S": "60"},
    )
    assert "after one grant 0" in out.stdout, out.stdout
    assert "third on a new worker True" in out.stdout, out.stdout


def test_idle_meter_sees_a_busy_cpu(tmp_path):
    from ember.runtime.node.cpu_idle import IdleMeter

    meter = IdleMeter()
    try:
        since = meter.read()
        assert since is not None
        deadline = time.process_time() + 0.3
        while time.process_time() < deadline:  # this thread keeps one CPU busy throughout
            pass
        idle = meter.idle_cpus(since)
        cpus = os.cpu_count()
        assert idle is not None and 0 <= idle <= cpus - 0.5, (idle, cpus)
    finally:
        meter.close()
    # Counters it cannot read: no figure, and the scheduler then tops up as if it could not tell.
    garbage = tmp_path / "stat"
    garbage.write_text("cpu  a b c\n")
    for path in (str(garbage), str(tmp_path / "missing")):
        meter = IdleMeter(path)
        assert meter.read() is None and meter.idle_cpus(None) is None
        meter.close()


def test_top_up_delay_setting_is_checked(monkeypatch):
    from ember.runtime.node import worker_pool

    monkeypatch.setenv(worker_pool.TOPUP_DELAY, "0")
    assert worker_pool.topup_delay_setting() == 0
    monkeypatch.delenv(worker_pool.TOPUP_DELAY)
    assert worker_pool.topup_delay_setting() > 0
    for bad in ("-1", "soon", "nan", "100"):
        monkeypatch.setenv(worker_pool.TOPUP_DELAY, bad)
        with pytest.raises(ValueError, match=worker_pool.TOPUP_DELAY):
            worker_pool.topup_delay_setting()


def test_actors_created_right_after_tasks_take_the_task_workers():
    """An owner keeps a lease idle for LEASE_LINGER in case another task of its shape comes; an actor
    created meanwhile (an ember.data actor pool right after a read) found no idle worker and started
    a new process (2 times in 3) while ours idled. The owner now gives them back first."""
    out = run_driver(
        PRELUDE
        + textwrap.dedent(
            """

        @ember.remote
        def pid_after(seconds):
            time.sleep(seconds)  # both tasks at once: two workers
            return os.getpid()

        @ember.remote(num_cpus=0.5)
        class Pid:
            def pid(self):
                return os.getpid()

        for round in range(3):
            both = set(ember.get([pid_after.remote(0.2) for _ in range(2)]))
            time.sleep(0.3)  # past the linger: both leases are back, both workers idle
            # One task: its lease lingers on one worker, holding a CPU, while the other idles. The
            # second actor then fits in the CPUs left but finds no idle worker unless ours comes back.
            ember.get(pid_after.remote(0))
            before = workers()
            actors = [Pid.remote() for _ in range(2)]
            actor_pids = set(ember.get([a.pid.remote() for a in actors]))
            assert actor_pids <= before, f"round {round}: actors in {actor_pids}, workers before {before}"
            assert actor_pids == both, (actor_pids, both)
            for actor in actors:
                ember.kill(actor)
            time.sleep(0.3)  # the killed actors' workers exit; the next round's tasks start new ones
        print("ok")
        ember.shutdown()
        """
        )
    )
    assert out.stdout.strip().endswith("ok")
