"""Faults caused for real: SIGKILLed workers and actors, cancellation, garbage on sockets."""

import os
import signal
import time

import pytest
from conftest import wait_for

import ember
import ember.runtime.client.core_client
from ember import api
from ember.exceptions import ActorDiedError, TaskCancelledError, WorkerCrashedError


@ember.remote(max_retries=2)
def die_once(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def test_killed_worker_task_is_retried(cluster, tmp_path):
    assert ember.get(die_once.remote(str(tmp_path / "m")), timeout=60) == "survived"


def test_killed_worker_without_retries_raises(cluster):
    @ember.remote(max_retries=0)
    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(WorkerCrashedError):
        ember.get(die.remote(), timeout=60)


def test_killed_worker_exhausts_retries(cluster):
    @ember.remote(max_retries=1)
    def always_die():
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(WorkerCrashedError):
        ember.get(always_die.remote(), timeout=60)


def test_worker_killed_from_outside(cluster, tmp_path):
    pid_file = tmp_path / "pid"

    @ember.remote(max_retries=1)
    def long_task(path):
        import pathlib

        p = pathlib.Path(path)
        if not p.exists():
            p.write_text(str(os.getpid()))
            time.sleep(60)
        return "second attempt"

    ref = long_task.remote(str(pid_file))
    wait_for(lambda: pid_file.exists() and pid_file.read_text(), message="the task to start")
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert ember.get(ref, timeout=60) == "second attempt"


@ember.remote
def spin(path):
    """Say it started (by creating ``path``), then run until cancelled."""
    open(path, "w").close()
    while True:
        time.sleep(0.01)


def test_cancel_running_task(cluster, tmp_path):
    started = tmp_path / "started"
    ref = spin.remote(str(started))
    wait_for(started.exists, message="the task to start")
    ember.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ember.get(ref, timeout=30)


def test_force_cancel_kills_the_worker(cluster, tmp_path):
    started = tmp_path / "started"

    @ember.remote
    def stubborn(path):
        import signal as s

        s.signal(s.SIGINT, s.SIG_IGN)
        open(path, "w").close()
        time.sleep(60)

    ref = stubborn.remote(str(started))
    wait_for(started.exists, message="the task to start")
    ember.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError):
        ember.get(ref, timeout=30)


def test_cancel_queued_task(cluster):
    @ember.remote(resources={"custom": 4})
    def hog():
        time.sleep(2)

    @ember.remote(resources={"custom": 4})
    def queued():
        return "ran"

    first = hog.remote()
    second = queued.remote()
    ember.cancel(second)
    with pytest.raises(TaskCancelledError):
        ember.get(second, timeout=30)
    ember.get(first, timeout=30)


def test_actor_restarts_after_sigkill(cluster):
    @ember.remote(max_restarts=1, max_task_retries=1)
    class Phoenix:
        def __init__(self):
            self.calls = 0

        def pid(self):
            return os.getpid()

        def incr(self):
            self.calls += 1
            return self.calls

    actor = Phoenix.remote()
    first_pid = ember.get(actor.pid.remote())
    assert ember.get(actor.incr.remote()) == 1
    os.kill(first_pid, signal.SIGKILL)
    second_pid = ember.get(actor.pid.remote(), timeout=60)
    assert second_pid != first_pid
    assert ember.get(actor.incr.remote()) == 1  # state is rebuilt by the constructor
    os.kill(second_pid, signal.SIGKILL)
    with pytest.raises(ActorDiedError):
        ember.get(actor.pid.remote(), timeout=60)


def test_actor_call_in_flight_is_retried(cluster, tmp_path):
    marker = tmp_path / "m"

    @ember.remote(max_restarts=1, max_task_retries=2)
    class Fragile:
        def work(self, path):
            if not os.path.exists(path):
                open(path, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            return "done"

    actor = Fragile.remote()
    assert ember.get(actor.work.remote(str(marker)), timeout=60) == "done"


def test_actor_without_restarts_dies(cluster):
    @ember.remote
    class Mortal:
        def pid(self):
            return os.getpid()

    actor = Mortal.remote()
    os.kill(ember.get(actor.pid.remote()), signal.SIGKILL)
    with pytest.raises(ActorDiedError):
        ember.get(actor.pid.remote(), timeout=60)


@ember.remote
class Target:
    def ping(self):
        return "pong"


def live_target():
    """A running actor, and what this driver knows of it (its worker's two addresses)."""
    actor = Target.remote()
    ember.get(actor.ping.remote())
    client = ember.runtime.client.core_client.current_client()
    return actor, client, client.submitter.actors[actor._actor_id]


def test_garbage_on_sockets_does_not_kill_services(cluster):
    from ember.runtime import transport

    actor, client, state = live_target()
    # The head, the node manager, the actor's worker (its task socket) and the driver's own server.
    targets = [
        api._context.address_info["address"],
        api._context.address_info["node_manager"],
        state.address,
        state.client_address,
        client.address,
    ]
    for address in targets:
        # A peer that holds the secret (a stranger's garbage never passes the handshake: test_security).
        sock = transport.connect_dealer(address.split("#")[0])  # a client's address also names its process
        for junk in ([b"\xff\x00garbage"], [b"\x81\xa2op\xa4nope"], [b"\x92\x01\x02", b"x" * 1000], [b""]):
            sock.send_multipart(junk)
        sock.close()
    # The cluster still works: tasks, actors and the head's tables.
    assert ember.get(actor.ping.remote(), timeout=30) == "pong"

    @ember.remote
    def ok():
        return 1

    assert ember.get(ok.remote(), timeout=30) == 1
    assert ember.nodes()[0]["Alive"]


def test_recursive_cancel_reaches_child_tasks(cluster, tmp_path):
    child_started = tmp_path / "child"

    @ember.remote
    def parent(path):
        return ember.get(spin.remote(path))

    ref = parent.remote(str(child_started))
    wait_for(child_started.exists, message="the child task to start")
    ember.cancel(ref, recursive=True)
    with pytest.raises(TaskCancelledError):
        ember.get(ref, timeout=30)
    # The child was cancelled too: its CPU comes back.
    wait_for(lambda: ember.available_resources().get("CPU") == 4, message="all CPUs to be free again")


def test_kill_with_restart(cluster):
    @ember.remote(max_restarts=1)
    class Restartable:
        def pid(self):
            return os.getpid()

    actor = Restartable.remote()
    first = ember.get(actor.pid.remote())
    ember.kill(actor, no_restart=False)
    # kill() is asynchronous, as in Ray: calls may still reach the old process for a moment.
    wait_for(lambda: _try_pid(actor) not in (None, first), timeout=30, message="a new process for the actor")


def _try_pid(actor):
    try:
        return ember.get(actor.pid.remote(), timeout=10)
    except ActorDiedError:
        return None


def test_misdirected_requests_are_answered_not_dropped(cluster):
    # A request that reaches the wrong socket (say, a port reused by a new process) must get an
    # error back, or its sender would wait forever.
    from ember.runtime import protocol, transport

    actor, _, state = live_target()
    for address, expected in ((state.address, "worker service does not accept"), (state.client_address, "died")):
        sock = transport.connect_dealer(address.split("#")[0])  # with the cluster's secret, as any peer
        request = {"op": protocol.GET_OBJECT, "rid": b"r1", "oid": b"\x00" * 16, "to": "127.0.0.1:1#gone"}
        sock.send_multipart(protocol.encode(request))
        assert sock.poll(10_000), f"no answer from {address}"
        header, _ = protocol.decode(sock.recv_multipart())
        sock.close()
        assert header["op"] == protocol.ERROR and header["rid"] == b"r1" and expected in header["error"]
    assert ember.get(actor.ping.remote(), timeout=30) == "pong"


def test_force_cancel_of_a_task_waiting_behind_another_spares_the_running_one(cluster, tmp_path):
    started = tmp_path / "started"

    @ember.remote(max_retries=0, resources={"custom": 4})
    def first(path):
        open(path, "w").close()
        time.sleep(1)
        return "first"

    @ember.remote(max_retries=0, resources={"custom": 4})
    def second():
        return "second"

    a = first.remote(str(started))
    b = second.remote()  # sent ahead to the same worker (two in flight per worker)
    wait_for(started.exists, message="the first task to start")
    ember.cancel(b, force=True)
    assert ember.get(a, timeout=30) == "first"  # not killed along with b
    with pytest.raises(TaskCancelledError):
        ember.get(b, timeout=30)
