"""The client's DEALER sockets to other processes (leased workers, actors, other owners, node managers).

A socket per peer address, opened on first use: a local link (:mod:`ember.runtime.local_link`) to a
worker on this machine that takes them, else a ZeroMQ DEALER. Sockets to peers we expect nothing more from are
kept open for a while (a worker whose lease went back is often leased again soon), then closed, so
the number of open sockets stays bounded.
"""

import collections
import time

import zmq

from ember.runtime import local_link, transport
from ember.runtime.service import EventLoop

MAX_IDLE_PEERS = 64  # sockets kept open to workers whose leases went back (see release)
PEER_IDLE_CLOSE = 5.0  # seconds such a socket stays open unused


class PeerSockets:
    """Only the thread that runs the client's loop calls these (they touch sockets and the loop).
    Each socket's messages go to ``on_frames``."""

    def __init__(self, loop: EventLoop, on_frames, in_use):
        self.loop = loop
        self.on_frames = on_frames
        self.in_use = in_use  # address -> bool: a lease we hold still talks to it (never closed idle)
        self.sockets: dict[str, zmq.Socket] = {}
        self.idle: collections.OrderedDict = collections.OrderedDict()  # address -> released at

    def socket(self, address: str) -> zmq.Socket:
        sock = self.sockets.get(address)
        if sock is None:
            sock = self.sockets[address] = self._open(address)
        elif self.idle:
            self.idle.pop(address, None)
        return sock

    def _open(self, address: str):
        endpoint = address.split("#", 1)[0]
        if local_link.enabled():
            path = transport.local_link_path(endpoint)
            conn = local_link.connect(path) if path is not None else None
            if conn is not None:
                link = local_link.Link(conn, self.on_frames, self._link_closed)
                link.address = address
                self.loop.add_link(link)
                return link
        sock = transport.connect_dealer(endpoint)
        self.loop.add_socket(sock, self.on_frames)
        return sock

    def _link_closed(self, link) -> None:
        # The worker is gone (its lessee or its actor's callers hear of that from the node manager
        # or the head, as with ZeroMQ); a later send to its address opens a new socket.
        self.loop.remove_fd(link.fd)
        if self.sockets.get(link.address) is link:
            del self.sockets[link.address]
            self.idle.pop(link.address, None)

    def _close_socket(self, sock) -> None:
        if type(sock) is local_link.Link:
            self.loop.remove_fd(sock.fd)
            sock.close()
        else:
            self.loop.remove_socket(sock)
            sock.close(0)

    def close(self, address: str | None) -> None:
        """Close our socket to a peer that is gone (or that we will not talk to again)."""
        self.idle.pop(address, None)
        sock = self.sockets.pop(address, None)
        if sock is not None:
            self._close_socket(sock)

    def release(self, address: str | None) -> None:
        """We expect no reply from this peer now: its socket may be closed after PEER_IDLE_CLOSE
        seconds (at most MAX_IDLE_PEERS are kept): the worker may have exited idle since, and we
        would not hear of it."""
        if address not in self.sockets:
            return
        self.idle[address] = time.monotonic()
        self.idle.move_to_end(address)
        while len(self.idle) > MAX_IDLE_PEERS:
            oldest, _ = self.idle.popitem(last=False)
            if not self.in_use(oldest):
                self.close(oldest)

    def close_idle(self, now: float) -> None:
        # Oldest first: stop at the first one released recently enough.
        while self.idle:
            address, since = next(iter(self.idle.items()))
            if now - since < PEER_IDLE_CLOSE:
                return
            del self.idle[address]
            if not self.in_use(address):
                self.close(address)

    def close_all(self) -> None:
        for sock in self.sockets.values():
            self._close_socket(sock)
        self.sockets.clear()
        self.idle.clear()
