"""State abuse refused by the head's handlers: messages that fit their schema but that the sender
has no business sending (ops only a node manager may send, forged registrations, bad actor
creations). Each comes from a real peer that holds the cluster's secret, over a real socket."""

import os

import msgpack
import pytest
from conftest import settled, wait_for
from multinode import LocalCluster

import ember
from ember import api
from ember.runtime import transport
from ember.runtime.client.core_client import current_client


def peer(address: str, token: str | None = None):
    return transport.connect_dealer(address, token=token)


def send(sock, header: dict, frames=()) -> None:
    # Packed by hand: the send-time schema check (EMBER_CHECK_MESSAGES) would refuse the bad ones here.
    sock.send_multipart([msgpack.packb(header), *frames])


def ask(sock, header: dict, frames=()) -> dict:
    """Send a request and return its answer (skipping pushes such as actor updates)."""
    send(sock, header, frames)
    while True:
        assert sock.poll(10_000), f"no answer to {header['op']}"
        answer = msgpack.unpackb(sock.recv_multipart()[0])
        if answer.get("rid") == header["rid"]:
            return answer


@ember.remote
class Echo:
    def ping(self):
        return "pong"

    def worker_id(self):
        return ember.get_runtime_context().get_worker_id()


def head_address() -> str:
    return api._context.address_info["address"]


def test_node_only_ops_from_a_driver_peer_are_refused(cluster):
    actor = Echo.remote()
    worker_id = bytes.fromhex(ember.get(actor.worker_id.remote()))
    node = ember.nodes()[0]
    node_id = bytes.fromhex(node["NodeID"])
    # The actor's creation lease is given back asynchronously: read the figures once they settled.
    wait_for(settled(ember.available_resources), timeout=20, message="the resources to settle")
    before = ember.available_resources()
    sock = peer(head_address())
    try:
        # Not the node's connection: its heartbeat must not rewrite the node's resources...
        send(sock, {"op": "node_stats", "node_id": node_id, "available": {"CPU": 0}, "total": {"CPU": 1}})
        # ...nor its worker's death restart or kill its actor, nor its goodbye end the node.
        send(sock, {"op": "worker_died", "wid": worker_id})
        answer = ask(sock, {"op": "unregister_node", "rid": b"u1", "node_id": node_id})
        assert answer["op"] == "error" and answer["etype"] == "PermissionError"
        # A job is ended by its driver or a node manager, not by anyone who knows its id.
        answer = ask(sock, {"op": "job_finished", "rid": b"j1", "job_id": current_client().job_id})
        assert answer["op"] == "error" and answer["etype"] == "PermissionError"
        send(sock, {"op": "logs", "batches": {b"": [["stdout", "x", 1, "forged", None]]}})
        nodes = ask(sock, {"op": "get_nodes", "rid": b"n1"})["nodes"]
    finally:
        sock.close(0)
    assert [n["alive"] for n in nodes if n["node_id"] == node_id] == [True]
    assert ember.get(actor.ping.remote(), timeout=30) == "pong"
    assert ember.get(actor.worker_id.remote(), timeout=30) == worker_id.hex()  # the same worker: not restarted
    assert ember.available_resources().get("CPU") == before.get("CPU")
    assert ember.nodes()[0]["Alive"]


def actor_spec(cid: bytes, **changes) -> dict:
    client = current_client()
    spec = {
        "rid": os.urandom(14),
        "owner": "127.0.0.1:1#forged",
        "owner_id": os.urandom(16),
        "cid": cid,
        "class_name": "Forged",
        "resources": {"CPU": 1},
        "running": {},
        "job": client.job_id,
    }
    spec.update(changes)
    return spec


def test_bad_actor_creations_fail_that_actor_only(cluster):
    good = [Echo.remote() for _ in range(2)]
    assert ember.get([a.ping.remote() for a in good], timeout=30) == ["pong", "pong"]
    job_id = current_client().job_id
    # A class that was exported, for the creations that are refused for another reason.
    exported = next(key for key in current_client().functions._exported if key)
    taken = good[0]._actor_id
    bad = [
        (b"\x00" * 16, actor_spec(exported)),  # a nil id
        (taken, actor_spec(exported)),  # the id of a live actor
        (os.urandom(16), actor_spec(b"never exported")),  # a class that does not exist
    ]
    sock = peer(head_address())
    try:
        for i, (actor_id, spec) in enumerate(bad):
            rid = b"c%d" % i
            answer = ask(sock, {"op": "create_actor", "rid": rid, "actor_id": actor_id, "job_id": job_id, "spec": spec})
            assert answer["op"] == "error", answer
        # Valid in form but impossible to place: it is created, then dies alone.
        doomed = os.urandom(16)
        strategy = {"node": "not hex at all", "soft": False}
        spec = actor_spec(exported, strategy=strategy)
        answer = ask(sock, {"op": "create_actor", "rid": b"c9", "actor_id": doomed, "job_id": job_id, "spec": spec})
        assert answer["op"] == "reply"
        state = ask(sock, {"op": "subscribe_actor", "rid": b"s9", "actor_id": doomed})["actor"]
        assert state["state"] == "DEAD" and "NodeAffinitySchedulingStrategy" in state["death_cause"]
    finally:
        sock.close(0)
    assert ember.get([a.ping.remote() for a in good], timeout=30) == ["pong", "pong"]


@pytest.fixture
def small_cluster():
    cluster = LocalCluster({"CPU": 1.0}, node_timeout_s=2.0)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_forged_registrations_are_refused_and_nodes_still_time_out(small_cluster):
    cluster = small_cluster
    sock = peer(cluster.address, cluster.token)
    other = peer(cluster.address, cluster.token)
    try:
        real = bytes.fromhex(cluster.nodes[0]["node_id"])
        for i, wrong in enumerate(
            [
                {"node_id": 12345, "address": "127.0.0.1:9", "resources": {"fake": 1}},  # an int id
                {"node_id": os.urandom(16), "address": "127.0.0.1", "resources": {"fake": 1}},  # no port
                {"node_id": os.urandom(16), "address": "127.0.0.1:9", "resources": {"fake": -1}},
                {"node_id": real, "address": "127.0.0.1:9", "resources": {"fake": 1}},  # a live node's id
            ]
        ):
            answer = ask(sock, {"op": "register_node", "rid": b"r%d" % i, **wrong})
            assert answer["op"] == "error", (wrong, answer)
        # A node that registers and then falls silent: heartbeats for it from another connection do
        # not keep it alive, and the head, which kept ticking, times it out.
        fake = os.urandom(16)
        answer = ask(sock, {"op": "register_node", "rid": b"ok", "node_id": fake, "address": "127.0.0.1:9",
                            "resources": {"fake": 1}})  # fmt: skip
        assert answer["op"] == "reply"
        answer = ask(other, {"op": "register_node", "rid": b"again", "node_id": fake, "address": "127.0.0.1:9",
                             "resources": {"fake": 1}})  # fmt: skip
        assert answer["op"] == "error"

        def fake_dead():
            send(other, {"op": "node_stats", "node_id": fake})
            table = {n["node_id"]: n["alive"] for n in cluster.node_table()}
            return table.get(fake) is False and table.get(real) is True

        wait_for(fake_dead, timeout=30, message="the silent node to be declared dead")
        # It stays dead: registering again is refused.
        answer = ask(sock, {"op": "register_node", "rid": b"back", "node_id": fake, "address": "127.0.0.1:9",
                            "resources": {"fake": 1}})  # fmt: skip
        assert answer["op"] == "error"
    finally:
        sock.close(0)
        other.close(0)
    assert {n["node_id"]: n["alive"] for n in cluster.node_table()}[real] is True
