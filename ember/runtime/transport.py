"""Every ZeroMQ socket Ember uses is made here.

Keeping socket creation in one place means that authentication and encryption (a cluster token,
CurveZMQ keys) can be switched on for the whole runtime in one module. An embedded cluster binds
loopback addresses only: unpickling a message is code execution, so nothing is exposed to a network
unless the user asks for it.
"""

import threading

import zmq

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
    if port:
        sock.bind(f"tcp://{host}:{port}")
    else:
        port = sock.bind_to_random_port(f"tcp://{host}")
    return sock, f"{host}:{port}"


def bind_publisher(host: str = "127.0.0.1") -> tuple[zmq.Socket, str]:
    sock = context().socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port(f"tcp://{host}")
    return sock, f"{host}:{port}"


def connect_dealer(address: str, identity: bytes | None = None) -> zmq.Socket:
    sock = _configure(context().socket(zmq.DEALER))
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    sock.connect(f"tcp://{address}")
    return sock


def connect_subscriber(address: str, topics=(b"",)) -> zmq.Socket:
    sock = context().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic)
    sock.connect(f"tcp://{address}")
    return sock
