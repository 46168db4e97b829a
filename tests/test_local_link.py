"""Local links (``ember.runtime.local_link``): calls to a worker on this machine over a Unix socket.

The framing over real socket pairs (messages split across reads, sends the kernel cannot take
whole), then the call path on the shared cluster: actor calls and tasks go over a link, keep their
order with large pipelined arguments and returns, raise the user's errors, and work as before
over ZeroMQ when the owner does not use links."""

import os
import select
import signal
import socket

import numpy as np
import pytest

import ember
from ember.exceptions import ActorDiedError
from ember.runtime import local_link, transport
from ember.runtime.client.core_client import current_client
from tests.conftest import run_driver, wait_for


def _pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    received_a, received_b = [], []
    return local_link.Link(a, received_a.append), local_link.Link(b, received_b.append), received_a, received_b


def _pump(links, until, rounds: int = 10_000) -> None:
    """Move bytes between the links until ``until()`` holds, as an event loop would."""
    for _ in range(rounds):
        if until():
            return
        readable, writable, _ = select.select(links, [link for link in links if link._out], [], 1.0)
        for link in writable:
            link.on_writable()
        for link in readable:
            link.on_readable()
    raise AssertionError("the links did not deliver")


def test_frames_cross_intact_and_in_order_whatever_their_size():
    left, right, _, got = _pair()
    watched = []
    left.want_write = lambda link, waiting: watched.append(waiting)
    big = np.arange(3 * 2**20, dtype=np.uint8).tobytes()  # more than the kernel takes at once
    many = [bytes([i]) * 1024 for i in range(100)]  # more frames than one sendmsg is given
    messages = [[b"header", b""], [b"x" * 70_000, b"y" * 70_000], [b"h", big, b"tail"], many, [b"last"]]
    for parts in messages:
        left.send_multipart(parts)
    assert left._out and watched == [True]  # the big one waits for the socket to drain
    _pump([left, right], lambda: len(got) == len(messages))
    assert [[bytes(f) for f in frames] for frames in got] == messages
    assert watched == [True, False] and not left._out
    # Frames from 64 KiB on come as views of the received buffer (no copy), as ZeroMQ's unwrap gives.
    assert isinstance(got[2][1], memoryview) and isinstance(got[2][0], bytes)
    assert isinstance(got[1][0], bytes) and isinstance(got[1][1], memoryview)  # a large header too
    left.close()
    right.close()


def test_a_message_split_across_reads_is_delivered_once_whole():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    got = []
    reader = local_link.Link(b, got.append)
    first = b"".join(local_link.encode([b"abc", b"defgh"]))
    wire = first + b"".join(local_link.encode([b"z"]))
    for i in range(len(wire)):
        a.send(wire[i : i + 1])
        reader.on_readable()
        assert len(got) == (i + 1 >= len(first)) + (i + 1 == len(wire))
    assert got == [[b"abc", b"defgh"], [b"z"]]
    a.close()
    reader.close()


def test_a_closed_peer_or_garbage_closes_the_link_once():
    # A body of 7 bytes whose one frame claims 9: the frames do not add up to the length.
    garbage = (7).to_bytes(4, "little") + (1).to_bytes(2, "little") + (9).to_bytes(4, "little") + b"x"
    for sent in (b"", garbage):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        closed = []
        reader = local_link.Link(b, lambda frames: None, closed.append)
        a.send(sent)
        a.close()
        reader.on_readable()
        assert closed == [reader] and reader.closed
        reader.send_multipart([b"dropped"])  # a send to a gone peer is dropped, as by ZeroMQ
        reader.on_readable()
        assert closed == [reader]


def test_nothing_listening_or_a_full_queue_means_no_link(tmp_path):
    path = str(tmp_path / "stale.calls")
    server = local_link.listen(path)
    server.close()  # the file stays, as after a SIGKILL
    assert local_link.connect(path) is None
    # A listener that accepts nothing (a worker inside a long call): once its queue is full, a
    # caller gets None at once instead of blocking its loop, and takes ZeroMQ.
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    busy.bind(str(tmp_path / "busy.calls"))
    busy.listen(1)
    opened = []
    for _ in range(100):
        conn = local_link.connect(str(tmp_path / "busy.calls"))
        if conn is None:
            break
        opened.append(conn)
    assert 1 <= len(opened) < 100
    for conn in opened:
        conn.close()
    busy.close()


def _links_of(client) -> dict:
    return {address: sock for address, sock in client.peers.sockets.items() if type(sock) is local_link.Link}


@ember.remote
class Recorder:
    def __init__(self):
        self.seen = []

    def add(self, i, payload=None):
        self.seen.append(i)
        return payload

    def seen_list(self):
        return self.seen

    def fail(self):
        raise KeyError("no such thing")

    def pid(self):
        return os.getpid()


@ember.remote
def echo(x):
    return x


def test_actor_calls_and_tasks_go_over_a_link_in_order_with_large_payloads(cluster):
    actor = Recorder.remote()
    pid = ember.get(actor.pid.remote())
    client = current_client()
    # Pipelined calls with arguments and returns just under the inline limit fill the socket
    # buffers on both sides: the rest waits for POLLOUT, in order.
    payload = np.full(90_000, 7, dtype=np.uint8)
    refs = [actor.add.remote(i, payload) for i in range(60)]
    for value in ember.get(refs):
        assert value.nbytes == payload.nbytes and int(value[0]) == 7
    assert ember.get(actor.seen_list.remote()) == list(range(60))
    with pytest.raises(KeyError, match="no such thing"):
        ember.get(actor.fail.remote())
    assert [ember.get(echo.remote(i)) for i in range(20)] == list(range(20))
    assert ember.get([echo.remote(payload) for _ in range(30)])[-1].nbytes == payload.nbytes
    address = client.submitter.actors[actor._actor_id].address
    assert type(client.peers.sockets.get(address)) is local_link.Link
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ActorDiedError):
        ember.get(actor.add.remote(-1), timeout=30)
    # The link saw the worker go (end of file) and was dropped, not kept as a dead socket.
    wait_for(lambda: address not in client.peers.sockets, message="the dead worker's link dropped")


def test_an_owner_without_links_is_served_over_zeromq(cluster, monkeypatch):
    monkeypatch.setenv(local_link.LINKS_VARIABLE, "0")
    actor = Recorder.remote()
    ember.get(actor.pid.remote())
    client = current_client()
    address = client.submitter.actors[actor._actor_id].address
    # Its worker may have run our tasks over a link before (a pooled worker): start afresh.
    client.call_soon(client.close_peer, address)
    wait_for(lambda: address not in client.peers.sockets, message="the old socket closed")
    assert [ember.get(actor.add.remote(i, i)) for i in range(20)] == list(range(20))
    assert address in client.peers.sockets and type(client.peers.sockets[address]) is not local_link.Link
    ember.kill(actor)


def test_a_cluster_without_links_runs_calls_as_before():
    code = """
import ember
ember.init(num_cpus=1)
@ember.remote
class A:
    def f(self, x):
        return x
@ember.remote
def g(x):
    return x + 1
a = A.remote()
assert [ember.get(a.f.remote(i)) for i in range(50)] == list(range(50))
assert ember.get(g.remote(1)) == 2
from ember.runtime.client.core_client import current_client
from ember.runtime import local_link
assert not any(type(s) is local_link.Link for s in current_client().peers.sockets.values())
ember.shutdown()
print("ok")
"""
    result = run_driver(code, env={local_link.LINKS_VARIABLE: "0"})
    assert result.stdout.strip().endswith("ok")


def test_the_link_lives_in_the_private_directory_under_the_secrets_name(cluster):
    actor = Recorder.remote()
    ember.get(actor.pid.remote())
    link_addresses = list(_links_of(current_client()))
    assert link_addresses
    path = transport.local_link_path(link_addresses[0].split("#", 1)[0])
    assert os.path.exists(path) and (os.stat(os.path.dirname(path)).st_mode & 0o777) == 0o700
    assert transport.local_link_path(link_addresses[0].split("#", 1)[0], token="wrong") != path
    ember.kill(actor)
