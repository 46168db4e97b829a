"""Fuzzing the real head over real sockets, from peers that hold the cluster's secret.

Hypothesis drives random bytes, the head's own messages with mutated, missing, mistyped and unknown
fields, and random ops at its ROUTER; and garbage replies at the sockets it opens to node managers
(through a fake node manager). After each barrage the head still answers, its tables hold what they
held (one live node, no actors, no stray jobs), and a real driver runs a task and an actor call.
"""

import copy
import json
import os

import msgpack
import pytest
import zmq
from conftest import run_driver, wait_for
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from multinode import LocalCluster
from test_messages import SAMPLES

from ember.runtime import messages, transport

HEAD_OPS = sorted(op for op, (service, _) in SAMPLES.items() if service == "head")
# Ops whose valid forms would change the cluster under test for good: stopping the head, or a node
# manager that is not one joining it (test_head_abuse covers forged registrations).
EXCLUDED = {"shutdown", "register_node"}
ALL_OPS = sorted(messages.BY_OP)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),  # what msgpack can carry
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=40),
)
keys = st.one_of(st.text(max_size=8), st.binary(max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)


def sample(op: str) -> dict:
    header = copy.deepcopy(SAMPLES[op][1])
    header["op"] = op
    if op == "create_placement_group":
        header["bundles"] = [{"fuzz": 1}]  # a group no node can hold: it never takes the node's CPU
    return header


@st.composite
def mutated(draw) -> dict:
    """One of the head's messages, valid, then changed in a few places."""
    header = sample(draw(st.sampled_from(HEAD_OPS)))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        kind = draw(st.sampled_from(["set", "drop", "add", "op"]))
        fields = sorted(k for k in header if k != "op")
        if kind == "set" and fields:
            header[draw(st.sampled_from(fields))] = draw(values)
        elif kind == "drop" and fields:
            del header[draw(st.sampled_from(fields))]
        elif kind == "add":
            header[draw(st.text(min_size=1, max_size=12))] = draw(values)
        elif kind == "op":
            header["op"] = draw(st.one_of(st.sampled_from(ALL_OPS), st.text(max_size=20), values))
    assume(not (isinstance(header.get("op"), str) and header["op"] in EXCLUDED))
    return header


@pytest.fixture(scope="module")
def fuzzed():
    cluster = LocalCluster({"CPU": 1.0}, node_timeout_s=3.0, shared=True)
    sock = transport.connect_dealer(cluster.address, token=cluster.token)
    try:
        yield cluster, sock
    finally:
        sock.close(0)
        cluster.stop()


def drain(sock) -> None:
    while sock.poll(0):
        sock.recv_multipart()


def ask(sock, header: dict) -> dict:
    sock.send_multipart([msgpack.packb(header)])
    while True:
        assert sock.poll(10_000), f"the head did not answer {header['op']}"
        answer = msgpack.unpackb(sock.recv_multipart()[0])
        if answer.get("rid") == header["rid"]:
            return answer


def check_head(cluster, sock, fake_nodes=()) -> None:
    """The head answers, and its tables hold what they held before the barrage."""
    drain(sock)
    real = bytes.fromhex(cluster.nodes[0]["node_id"])
    nodes = {n["node_id"]: n for n in ask(sock, {"op": "get_nodes", "rid": b"check"})["nodes"]}
    assert nodes[real]["alive"] and nodes[real]["resources"].get("CPU") == 1.0
    assert all(not n["alive"] for node_id, n in nodes.items() if node_id not in (real, *fake_nodes))
    # No actor was created by the barrage (those of the checking drivers are dead once they end).
    actors = ask(sock, {"op": "state_query", "rid": b"actors", "kind": "actors"})["rows"]
    assert [row["state"] for row in actors if row["state"] != "DEAD"] == [], actors

    def settled():
        sizes = ask(sock, {"op": "table_sizes", "rid": b"sizes"})["sizes"]
        return sizes["named"] == 0 and sizes["worker_actor"] == 0 and sizes["pending_requests"] == 0

    wait_for(settled, timeout=30, message="the head's tables to hold no live actor")
    jobs = ask(sock, {"op": "state_query", "rid": b"jobs", "kind": "jobs"})["rows"]
    assert all(isinstance(job["job_id"], bytes) and len(job["job_id"]) == 4 for job in jobs)


def check_cluster_works(cluster) -> None:
    code = f"""
import json, ember
ember.init(address={cluster.address!r})

@ember.remote
def add(a, b):
    return a + b

@ember.remote
class Counter:
    def __init__(self):
        self.n = 0
    def incr(self):
        self.n += 1
        return self.n

counter = Counter.remote()
print(json.dumps([ember.get(add.remote(1, 2), timeout=60), ember.get(counter.incr.remote(), timeout=60),
                  [n["Alive"] for n in ember.nodes()]]))
"""
    out = json.loads(run_driver(code, timeout=120, env={"EMBER_CLUSTER_TOKEN": cluster.token}).stdout.splitlines()[-1])
    assert out[0] == 3 and out[1] == 1 and True in out[2]


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def test_random_bytes_at_the_head(fuzzed):
    cluster, sock = fuzzed

    @SETTINGS
    @given(st.lists(st.binary(max_size=300), min_size=1, max_size=3))
    def barrage(frames):
        sock.send_multipart(frames)

    barrage()
    check_head(cluster, sock)


def test_mutated_messages_at_the_head(fuzzed):
    cluster, sock = fuzzed

    @SETTINGS
    @given(mutated(), st.lists(st.binary(max_size=64), max_size=2))
    def barrage(header, payload):
        sock.send_multipart([msgpack.packb(header), *payload])

    barrage()
    check_head(cluster, sock)
    check_cluster_works(cluster)
    check_head(cluster, sock)  # the driver's job ended; its actor went with it


def test_garbage_replies_on_the_heads_sockets_to_node_managers(fuzzed):
    cluster, sock = fuzzed
    # A fake node manager: the head connects a socket to it, whose replies it must survive.
    router, address = transport.bind_router("127.0.0.1", token=cluster.token)
    fake = transport.connect_dealer(cluster.address, token=cluster.token)
    try:
        node_id = os.urandom(16)
        answer = ask(fake, {"op": "register_node", "rid": b"reg", "node_id": node_id, "address": address,
                            "resources": {"fuzz": 1}})  # fmt: skip
        assert answer["op"] == "reply"
        # The head's socket shows itself with its first cluster view.
        wait_for(lambda: router.poll(100), message="the head's cluster view")
        head_identity = router.recv_multipart()[0]
        replies = st.one_of(
            st.binary(max_size=200),
            st.builds(msgpack.packb, st.fixed_dictionaries({"op": st.sampled_from(["reply", "error", "lease_granted",
                      "lease_infeasible", "task_result"]), "rid": st.binary(max_size=40)}, optional={"ok": values,
                      "wid": values, "addr": values, "error": values, "cancelled": values})),
        )  # fmt: skip

        @SETTINGS
        @given(replies)
        def barrage(frame):
            router.send_multipart([head_identity, frame], flags=zmq.NOBLOCK)
            fake.send_multipart([msgpack.packb({"op": "node_stats", "node_id": node_id})])

        barrage()
        check_head(cluster, sock, fake_nodes=[node_id])
        check_cluster_works(cluster)
    finally:
        fake.close(0)
        router.close(0)
    # Silent now, the fake node is timed out as any other.
    wait_for(lambda: not {n["node_id"]: n["alive"] for n in cluster.node_table()}[node_id], timeout=30,
             message="the fake node to time out")  # fmt: skip
