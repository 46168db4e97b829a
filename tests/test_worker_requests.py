"""What a worker's task socket accepts, given what the worker is: requests that are well formed but
do not fit its state (a task or a second constructor sent to an actor's worker, an actor call sent
to a task worker) are refused with an error reply, and the worker goes on as it was."""

import os

import pytest
from conftest import hold_a_leased_worker

import ember
from ember.runtime import protocol, transport
from ember.runtime.client.core_client import current_client
from ember.runtime.ids import new_id, new_task_id
from ember.runtime.serialization import serialize


@ember.remote
def echo(value):
    return value


@ember.remote(max_restarts=2)
class Counter:
    def __init__(self):
        self.count = 0

    def incr(self):
        self.count += 1
        return self.count

    def pid(self):
        return os.getpid()


def _task_fields(client) -> dict:
    """The fields every task message carries, as this driver's submitter fills them."""
    return {
        "rid": new_task_id(),
        "tname": "forged",
        "job": client.job_id,
        "owner": client.address,
        "owner_id": client.client_id,
        "owner_node": client.node_id,
    }


def _arguments(*args) -> list:
    data, buffers, _ = serialize((args, {}))
    return [data, *buffers]


def _ask(address: str, header: dict, frames=()) -> dict:
    """Send one request to a task socket as a peer holding the cluster's secret; its reply header."""
    sock = transport.connect_dealer(address.split("#")[0])
    try:
        sock.send_multipart(protocol.encode(header, list(frames)))
        assert sock.poll(20_000), f"no reply to {header['op']} from {address}"
        reply, _ = protocol.decode(sock.recv_multipart())
        return reply
    finally:
        sock.close(0)


def _actor_address(actor) -> str:
    return current_client().submitter.actors[actor._actor_id].address


def test_actor_worker_refuses_a_task_and_a_second_constructor(cluster):
    client = current_client()
    counter = Counter.remote()
    assert ember.get(counter.incr.remote()) == 1
    pid = ember.get(counter.pid.remote())
    address = _actor_address(counter)
    function_key = echo._export(client)

    # The case: a task with max_calls=1 would make the actor's process exit after it, and
    # an actor that exits cleanly is not restarted, max_restarts or not.
    task = {**_task_fields(client), "op": protocol.EXECUTE_TASK, "fid": function_key, "nret": 1, "max_calls": 1}
    reply = _ask(address, task, _arguments(5))
    assert reply["op"] == protocol.ERROR and reply["rid"] == task["rid"]
    assert "hosts the actor Counter" in reply["error"] and reply["etype"] == "ValueError"

    constructor = {
        **_task_fields(client),
        "op": protocol.CREATE_ACTOR_INSTANCE,
        "rid": (actor_id := new_id(16)),
        "actor_id": actor_id,
        "cid": function_key,
        "class_name": "Impostor",
        "resources": {"CPU": 1},
        "running": {},
    }
    reply = _ask(address, constructor, _arguments())
    assert reply["op"] == protocol.ERROR and reply["rid"] == actor_id and "already" in reply["error"]

    # The same process, with the same state, still answers; its calls still run in order.
    assert ember.get([counter.incr.remote() for _ in range(3)]) == [2, 3, 4]
    assert ember.get(counter.pid.remote()) == pid
    assert ember.get(echo.remote(7)) == 7


def test_task_worker_refuses_actor_calls(cluster, tmp_path):
    release = tmp_path / "release"
    client = current_client()
    # The running task keeps its worker leased to us: that is the socket to send to.
    ref, lease = hold_a_leased_worker(release)
    call = {**_task_fields(client), "op": protocol.ACTOR_CALL, "method": "incr", "nret": 1}
    sock = transport.connect_dealer(lease.address.split("#")[0])
    try:
        sock.send_multipart(protocol.encode(call, _arguments()))
        release.touch()
        assert ember.get(ref, timeout=30) == lease.pid
        assert sock.poll(20_000), "no reply to the actor call"
        reply, _ = protocol.decode(sock.recv_multipart())
    finally:
        sock.close(0)
    assert reply["op"] == protocol.ERROR and reply["rid"] == call["rid"] and "hosts no actor" in reply["error"]
    assert ember.get([echo.remote(i) for i in range(4)]) == [0, 1, 2, 3]


@pytest.mark.parametrize("options", [{"num_cpus": 1}, {"num_cpus": 1, "resources": {"custom": 0.5}}])
def test_actor_sees_its_assigned_resources(cluster, options):
    # create_actor_instance carries them as `assigned`; they used to be read from `res` (a task's
    # field), so an actor saw none.
    @ember.remote(**options)
    class Probe:
        def __init__(self):
            self.at_start = ember.get_runtime_context().get_assigned_resources()

        def assigned(self):
            return self.at_start, ember.get_runtime_context().get_assigned_resources()

    probe = Probe.remote()
    expected = {"CPU": 1, **options.get("resources", {})}
    at_start, in_call = ember.get(probe.assigned.remote())
    assert at_start == in_call == expected
    ember.kill(probe)
