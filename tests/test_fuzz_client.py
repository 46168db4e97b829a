"""Fuzzing a driver's core client where peers reach it: its owner service (a ROUTER every borrower
and worker may call) and its DEALER sockets (pushes and replies from the peers it talks to).

The fuzzing peer holds the cluster's secret (it is this very driver process), so its messages pass
the handshake and reach the decoders and handlers. After each barrage the owner service still
answers, the driver's tables hold nothing the fuzzer made up, and tasks, actor calls, puts and gets
work.
"""

import msgpack
import zmq
from conftest import assert_cluster_works, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ember
from ember.runtime import protocol, transport
from ember.runtime.client.core_client import current_client

OWNER_OPS = [protocol.GET_OBJECT, protocol.ADD_BORROWER, protocol.REMOVE_BORROWER, protocol.CANCEL_TASK]
CLIENT_OPS = [
    protocol.LEASE_INFEASIBLE,
    protocol.LEASED_WORKER_DIED,
    protocol.ACTOR_UPDATE,
    protocol.STREAM_ITEM,
    protocol.OWNER_DIED,
    protocol.NODE_DEAD,
    protocol.EXIT_IF_IDLE,
    protocol.REPLY,
    protocol.ERROR,
    "lease_granted",
    "task_result",
]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

# Field values: right-looking ones (ids of the right size, addresses) and wrong ones of every kind.
anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
ids = st.binary(min_size=16, max_size=16) | st.binary(min_size=14, max_size=14) | st.binary(max_size=20)
addresses = st.sampled_from(["127.0.0.1:1", "127.0.0.1:2#abc", "x:99999", "", "host:80#a.b"]) | st.text(max_size=30)
field_values = {
    "rid": st.binary(min_size=1, max_size=32) | anything,
    "oid": ids | anything,
    "addr": addresses | anything,
    "to": addresses | anything,
    "node": ids | anything,
    "task_id": ids | anything,
    "recursive": st.booleans() | anything,
    "wid": ids | anything,
    "node_id": ids | anything,
    "address": addresses | anything,
    "idx": st.integers(-5, 2**63) | anything,
    "ret": st.sampled_from([["v", 0, 3, []], ["s", 5, b"n" * 16, []], ["e"]]) | anything,
    "actor": st.fixed_dictionaries({"actor_id": ids, "state": st.sampled_from(["ALIVE", "DEAD", "RESTARTING"])})
    | anything,
    "loc": st.sampled_from([["v", 0], ["s", b"n" * 16], ["e"], ["v", 9]]) | anything,
    "rets": st.lists(st.sampled_from([["v", 0, 3, []], ["s", 5, b"n" * 16, []]]), max_size=3) | anything,
    "err": st.booleans() | anything,
    "res": st.dictionaries(st.text(max_size=5), st.integers(0, 9), max_size=2) | anything,
    "total": st.dictionaries(st.text(max_size=5), st.integers(0, 9), max_size=2) | anything,
    "error": st.text(max_size=20) | anything,
    "etype": st.sampled_from(["OwnerDiedError", "ValueError"]) | anything,
}


def headers(ops):
    """A header for one of ``ops`` (or a made-up one) with a random subset of plausible fields."""
    return st.builds(
        lambda op, fields, extra: {"op": op, **fields, **extra},
        st.sampled_from(ops) | st.text(max_size=12) | anything,
        st.fixed_dictionaries({}, optional=field_values),
        st.just({}) | st.just({}) | st.dictionaries(st.text(max_size=6), anything, max_size=2),  # mostly none
    )


messages = st.one_of(
    st.tuples(
        headers(OWNER_OPS + CLIENT_OPS).map(lambda h: msgpack.packb(h, use_bin_type=True)),
        st.lists(st.binary(max_size=64), max_size=3),
    ),
    st.tuples(st.binary(max_size=64), st.lists(st.binary(max_size=16), max_size=2)),  # random bytes
)


def _still_serves(client, sock) -> None:
    """The owner service answers a well-formed request (for an object it does not know: an error)."""
    while sock.poll(0):
        sock.recv_multipart()  # answers to the fuzz, if any
    rid = b"probe-" + bytes(range(8))
    sock.send_multipart(protocol.encode({"op": protocol.GET_OBJECT, "rid": rid, "oid": b"\x00" * 16}))
    for _ in range(100):
        assert sock.poll(10_000), "the owner service stopped answering"
        header = msgpack.unpackb(sock.recv_multipart()[0], raw=False)
        if header.get("rid") == rid:
            assert header["op"] == protocol.ERROR
            return




def _tables_clean(client, before: set) -> None:
    # Nothing the fuzzer sent became an owned object, a borrower or a pending request of ours.
    wait_for(lambda: set(client.objects.entries) <= before, message="fuzzed objects gone")
    assert not client.objects.references.owned.keys() - before


def test_owner_service_survives_fuzzed_requests(cluster):
    client = current_client()
    sock = transport.connect_dealer(client.address.split("#")[0])
    sock.setsockopt(zmq.LINGER, 0)
    kept = ember.put(b"kept")  # a real object: fuzzed borrowers of random ids must not touch it
    before = set(client.objects.entries)
    try:

        @FUZZ
        @given(
            message=st.tuples(
                headers(OWNER_OPS).map(lambda h: msgpack.packb(h, use_bin_type=True)),
                st.lists(st.binary(max_size=32), max_size=2),
            )
            | messages
        )
        def barrage(message):
            header, payload = message
            sock.send_multipart([header, *payload])

        barrage()
        _still_serves(client, sock)
    finally:
        sock.close()
    assert ember.get(kept) == b"kept"
    assert not client.objects.references.owned[kept._id].borrowers
    _tables_clean(client, before)
    assert_cluster_works()


def test_pushes_and_replies_from_a_peer_are_checked(cluster):
    """A peer the client talks to (here a ROUTER it sent one message to) answers with garbage,
    forged pushes and replies to requests nobody made: each is dropped or ignored."""
    client = current_client()
    router, endpoint = transport.bind_router("127.0.0.1")
    router.setsockopt(zmq.LINGER, 0)
    peer = f"{endpoint.split('//')[-1]}"
    before = set(client.objects.entries)
    try:
        client.call_soon(
            client.send, peer, {"op": protocol.REMOVE_BORROWER, "oid": b"\x01" * 16, "addr": client.address}
        )
        assert router.poll(10_000)
        identity = router.recv_multipart()[0]

        @FUZZ
        @given(message=messages)
        def barrage(message):
            header, payload = message
            router.send_multipart([identity, header, *payload])

        barrage()
        # The I/O loop went through all of it: a request sent after the barrage is answered.
        reply, _ = client.request("head", {"op": protocol.KV_GET, "key": b"fuzz:none"}, timeout=30)
        assert reply.found is False
    finally:
        client.call_soon(client.close_peer, peer)
        router.close()
    _tables_clean(client, before)
    assert_cluster_works()
