"""Fuzzing a worker's task socket over a real socket, from a peer that holds the cluster's secret:
well-formed requests with mutated fields, other services' ops, random msgpack values and random
bytes. Afterwards the worker is the same process in the same state: the actor answers with its
state intact, the task worker still answers and tasks run. Every reply the barrage drew is a valid
message for a client (the worker never answers with something its owners could not read)."""

import os
import pickle

import msgpack
import pytest
from conftest import hold_a_leased_worker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_messages import SAMPLES

import ember
from ember.runtime import messages, protocol, transport
from ember.runtime.client.core_client import current_client
from ember.runtime.ids import new_task_id

DROP = object()
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

# Field values of every msgpack type, in and out of the ranges the schemas allow.
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=24),
    st.binary(max_size=40),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=5),
    st.dictionaries(st.text(max_size=6), st.integers(min_value=-2, max_value=2) | st.text(max_size=4), max_size=3),
)
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
payloads = st.lists(
    st.sampled_from([pickle.dumps(((), {})), pickle.dumps(((3,), {})), pickle.dumps((([1, 2],), {}))])
    | st.binary(max_size=64),
    max_size=3,
)


@ember.remote
def echo(*args):
    return args[0] if args else None


@ember.remote
class Keeper:
    def __init__(self):
        self.count = 0

    def incr(self):
        self.count += 1
        return self.count

    def value(self, *args):
        return self.count

    def pid(self):
        return os.getpid()


def _worker_headers(client, function_key: bytes) -> dict:
    """Valid requests of each worker op, as this driver's submitter and the head fill them."""
    common = {
        "tname": "fuzz",
        "job": client.job_id,
        "owner": client.address,
        "owner_id": client.client_id,
        "owner_node": client.node_id,
        "nbuf": 0,
    }
    return {
        protocol.EXECUTE_TASK: {**common, "fid": function_key, "nret": 1, "res": {"CPU": 1}, "max_calls": 0},
        # Only methods that change nothing: the state is checked afterwards.
        protocol.ACTOR_CALL: {**common, "method": "value", "nret": 1},
        protocol.CREATE_ACTOR_INSTANCE: {
            **common,
            "actor_id": b"a" * 16,
            "cid": function_key,
            "class_name": "Impostor",
            "resources": {"CPU": 1},
            "running": {},
        },
    }


# Fields a mutation may touch: every worker field but max_calls (a task worker that honours it
# exits, as it should; the checks afterwards need the same process) and the method name (kept to
# the harmless ones below).
MUTABLE = [
    "rid", "tname", "job", "owner", "owner_id", "owner_node", "tag", "nbuf", "argobj", "refs", "fid", "nret",
    "env", "pg", "res", "gpus", "cgroup", "actor_id", "cid", "class_name", "max_concurrency",
    "concurrency_groups", "assigned", "meta", "restarted", "surprise",
]  # fmt: skip
METHODS = ["value", "pid", "missing", "__ray_ready__", "_hidden", ""]
# Other services' ops (the worker's own are drawn above, with the harmless methods only).
OTHER_OPS = sorted(set(SAMPLES) - {cls.__struct_config__.tag for cls in messages.WORKER_REQUESTS})


@st.composite
def requests(draw, headers: dict):
    """(frames) of one request: a worker op with some fields mutated, another service's op, a
    random msgpack value, or random bytes."""
    kind = draw(st.sampled_from(["worker", "worker", "worker", "other op", "msgpack", "bytes"]))
    if kind == "bytes":
        return [draw(st.binary(min_size=0, max_size=120)), *draw(payloads)]
    if kind == "msgpack":
        return [msgpack.packb(draw(msgpack_values), use_bin_type=True), *draw(payloads)]
    if kind == "other op":
        op = draw(st.sampled_from(OTHER_OPS))
        header = {"op": op, **SAMPLES[op][1]}
    else:
        op = draw(st.sampled_from(sorted(headers)))
        header = {
            "op": op,
            **headers[op],
            "rid": new_task_id() if op != protocol.CREATE_ACTOR_INSTANCE else os.urandom(16),
        }
        if op == protocol.ACTOR_CALL:
            header["method"] = draw(st.sampled_from(METHODS))
        if draw(st.booleans()):  # an inline ObjectRef argument, in the payload's second frame
            header["refs"] = [[0, "v", 1, 0]]
        for _ in range(draw(st.integers(min_value=0, max_value=3))):
            name, value = draw(st.sampled_from(MUTABLE)), draw(st.one_of(st.just(DROP), values))
            if value is DROP:
                header.pop(name, None)
            else:
                header[name] = value
    return [msgpack.packb(header, use_bin_type=True), *draw(payloads)]


def _barrage(address: str, headers: dict, settle=None) -> tuple[list, dict]:
    """Send the fuzz examples to ``address``; ``settle()`` (if any) runs once they are all sent.
    Returns every reply the worker sent back, up to that to a last, known request, and the op of
    each request id sent (where the header had one)."""
    sock = transport.connect_dealer(address.split("#")[0])
    sent = {}
    try:

        @FUZZ
        @given(requests(headers))
        def send(frames):
            sock.send_multipart(frames)
            try:
                header = msgpack.unpackb(frames[0])
                sent[header["rid"]] = header["op"]
            except Exception:
                pass  # not a map with a rid and an op: nothing to match a reply to

        send()
        if settle is not None:
            settle()
        # A last request whose answer is known (refused either way): the replies before it are the
        # barrage's, in order, since the worker answers one socket's requests in arrival order
        # (threaded actors aside, whose calls may finish out of order: all replies are read anyway).
        probe = {"op": protocol.CREATE_ACTOR_INSTANCE, "rid": b"probe-probe-0001"}
        sock.send_multipart([msgpack.packb(probe)])  # not protocol.encode: its check would refuse it here
        replies = []
        while True:
            assert sock.poll(30_000), "the worker stopped answering"
            frames = sock.recv_multipart()
            reply = messages.decode_header("client", frames[0])  # raises BadMessage if it is not valid
            replies.append(reply)
            if reply.rid == probe["rid"]:
                return replies, sent
    finally:
        sock.close(0)


@pytest.mark.parametrize("concurrency", [1, 3], ids=["plain actor", "threaded actor"])
def test_fuzzed_actor_worker_keeps_its_actor(cluster, concurrency):
    client = current_client()
    keeper = Keeper.options(max_concurrency=concurrency).remote()
    assert ember.get([keeper.incr.remote() for _ in range(3)]) == [1, 2, 3]
    pid = ember.get(keeper.pid.remote())
    address = client.submitter.actors[keeper._actor_id].address

    replies, sent = _barrage(address, _worker_headers(client, echo._export(client)))

    # Every task and constructor was refused (this worker hosts an actor); some calls ran.
    ran = {sent.get(reply.rid) for reply in replies if reply.__struct_config__.tag == protocol.TASK_RESULT}
    assert ran == {protocol.ACTOR_CALL}
    assert ember.get(keeper.pid.remote()) == pid
    assert ember.get([keeper.incr.remote() for _ in range(2)]) == [4, 5]
    assert ember.get(echo.remote("task")) == "task"


def test_fuzzed_task_worker_still_runs_tasks(cluster, tmp_path):
    release = tmp_path / "release"
    client = current_client()
    # The held task keeps the worker leased to us (and alive) while the barrage queues up behind it.
    ref, lease = hold_a_leased_worker(release)

    headers = _worker_headers(client, echo._export(client))
    # A worker without an actor takes create_actor_instance from whoever sends it (the head leased
    # it for that); a forged one would make it an actor's worker for good, which is not this test's.
    del headers[protocol.CREATE_ACTOR_INSTANCE]
    replies, sent = _barrage(lease.address, headers, settle=release.touch)

    assert ember.get(ref, timeout=30) == lease.pid
    # Forged tasks ran (their function exists); every actor call was refused.
    ran = {sent.get(reply.rid) for reply in replies if reply.__struct_config__.tag == protocol.TASK_RESULT}
    assert ran == {protocol.EXECUTE_TASK}
    assert any(reply.__struct_config__.tag == protocol.ERROR for reply in replies)
    assert ember.get([echo.remote(i) for i in range(4)]) == [0, 1, 2, 3]
    os.kill(lease.pid, 0)  # the same process is still there
