"""Every ZeroMQ socket Ember uses is made here.

Keeping socket creation in one place means that authentication and encryption switch on for the
whole runtime in one module. An embedded cluster binds loopback addresses only: unpickling a
message is code execution, so nothing is exposed to a network unless the user asks for it.

A cluster that listens on a network address must have a token (``EMBER_CLUSTER_TOKEN``; ``ember
start`` makes one). Every socket then speaks CurveZMQ: the servers' key pair is derived from the
token, so only a process that knows the token can complete a handshake, and all traffic is
encrypted. Binding a non-loopback address without a token is refused.
"""

import hashlib
import os
import threading

import zmq
from zmq.utils import z85

TOKEN_VARIABLE = "EMBER_CLUSTER_TOKEN"
_keys: dict = {}

_context = None
_context_lock = threading.Lock()


def context() -> zmq.Context:
    """The process-wide ZeroMQ context (created on first use, recreated after a fork)."""
    global _context
    with _context_lock:
        if _context is None or _context.closed:
            _context = zmq.Context()
        return _context


_forgotten: list = []


def forget_context() -> None:
    """In a forked child: drop the parent's context without terminating it (see worker_process)."""
    global _context
    if _context is not None:
        _forgotten.append(_context)
    _context = None


def _cluster_keys() -> tuple | None:
    """(server public, server secret, client public, client secret) for this process's token."""
    token = os.environ.get(TOKEN_VARIABLE)
    if not token:
        return None
    keys = _keys.get(token)
    if keys is None:
        secret = z85.encode(hashlib.sha256(b"ember-cluster-key:" + token.encode()).digest())
        keys = _keys[token] = (zmq.curve_public(secret), secret, *zmq.curve_keypair())
    return keys


def _secure_server(sock: zmq.Socket, host: str) -> None:
    keys = _cluster_keys()
    if keys is None:
        if not (host.startswith("127.") or host in ("localhost", "::1")):
            sock.close(0)
            raise ValueError(
                f"Refusing to listen on {host} without a cluster token: anyone who can reach it could run "
                f"code here. Set {TOKEN_VARIABLE} (ember start does), or listen on 127.0.0.1."
            )
        return
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys[1])


def _secure_client(sock: zmq.Socket) -> None:
    keys = _cluster_keys()
    if keys is not None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, keys[0])
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys[2])
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys[3])


def _configure(sock: zmq.Socket) -> zmq.Socket:
    sock.setsockopt(zmq.LINGER, 0)
    # Control traffic must not be dropped silently under load: block senders rather than drop.
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    return sock


def bind_router(host: str = "127.0.0.1", port: int = 0) -> tuple[zmq.Socket, str]:
    """A ROUTER bound on ``host`` (a random free port when ``port`` is 0); returns (socket, "host:port")."""
    sock = _configure(context().socket(zmq.ROUTER))
    sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
    _secure_server(sock, host)
    if port:
        sock.bind(f"tcp://{host}:{port}")
    else:
        port = sock.bind_to_random_port(f"tcp://{host}")
    return sock, f"{host}:{port}"


def bind_publisher(host: str = "127.0.0.1") -> tuple[zmq.Socket, str]:
    sock = context().socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    _secure_server(sock, host)
    port = sock.bind_to_random_port(f"tcp://{host}")
    return sock, f"{host}:{port}"


def connect_dealer(address: str, identity: bytes | None = None) -> zmq.Socket:
    sock = _configure(context().socket(zmq.DEALER))
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    _secure_client(sock)
    sock.connect(f"tcp://{address}")
    return sock


def connect_subscriber(address: str, topics=(b"",)) -> zmq.Socket:
    sock = context().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    _secure_client(sock)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic)
    sock.connect(f"tcp://{address}")
    return sock


def watch_disconnects(sock: zmq.Socket) -> zmq.Socket:
    """A socket that receives one message each time ``sock`` loses a connection."""
    return sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
