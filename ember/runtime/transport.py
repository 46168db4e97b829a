"""Every ZeroMQ socket Ember uses is made here, so authentication switches on in one place.

Unpickling a message is code execution, and a machine has other users: every cluster, the
embedded one on loopback included, has a secret (``EMBER_CLUSTER_TOKEN``, made fresh when the
cluster starts), and every server socket admits only peers that prove they hold it or that run as
this user on this machine:

- TCP (what other machines, and other users, reach) speaks CurveZMQ. Both key pairs are derived
  from the secret (server: HKDF(secret, "server"), client: HKDF(secret, "client")), and a ZAP
  handler in every process (``_Authenticator``) admits a client only if it proved it holds the
  derived client key: knowing the server's public key, or bringing a key pair of one's own, is not
  enough. Traffic is encrypted.
- Each server also listens on an ipc:// socket in the user's 0700 runtime directory, named after
  its address and a hash of the secret's server key; a client of this user and this secret on this
  machine connects there, without Curve's per-message encryption (``_bind_local``).
  ``EMBER_LOCAL_IPC=0`` turns that off: every connection is then Curve over TCP, as between machines.

A process without a secret can neither listen nor connect: ``MissingSecretError``. Figures and the
reasons for this design: "Authentication" in docs/architecture.md.
"""

import hashlib
import hmac
import logging
import os
import stat
import threading

import msgspec
import zmq
from zmq.utils import z85

TOKEN_VARIABLE = "EMBER_CLUSTER_TOKEN"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq sends its authentication requests (RFC 27)

logger = logging.getLogger(__name__)
# The event hub's messages, decoded by its subscribers (the widgets' feed, the dashboard's pages):
# msgspec's decoder takes a quarter less time than msgpack's for these batches of small maps.
_decode_event = msgspec.msgpack.Decoder().decode

_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


class MissingSecretError(RuntimeError):
    """This process has no cluster secret, so it can neither serve nor reach a cluster."""


class AuthenticationError(ConnectionError):
    """A server refused our handshake: this process does not hold that cluster's secret."""


class ClusterKeys:
    """The Curve keys derived from one cluster secret (z85 text, as libzmq takes them)."""

    def __init__(self, token: str):
        if not isinstance(token, str) or not token:
            raise ValueError("A cluster secret must be a non-empty string.")
        self.server_secret = z85.encode(_derive(token, b"server"))
        self.server_public = zmq.curve_public(self.server_secret)
        self.client_secret = z85.encode(_derive(token, b"client"))
        self.client_public = zmq.curve_public(self.client_secret)
        self.client_public_raw = z85.decode(self.client_public)


def _derive(token: str, label: bytes) -> bytes:
    # HKDF-SHA256 (RFC 5869) with one output block: 32 bytes, a Curve25519 secret key.
    prk = hmac.new(b"ember-cluster-secret", token.encode(), hashlib.sha256).digest()
    return hmac.new(prk, b"ember " + label + b"\x01", hashlib.sha256).digest()


_keys: dict = {}
# ZAP domain -> the client public key its servers admit; a process may serve with several secrets
# (a driver of one cluster that started another), and each socket admits its own cluster only.
_admitted: dict = {}
# ZAP domains of node-local ipc:// endpoints, which admit unencrypted (NULL) peers: see _bind_local.
_local_domains: set = set()
_ipc_dir: list = []
LOCAL_IPC_VARIABLE = "EMBER_LOCAL_IPC"


def current_token() -> str | None:
    """The cluster secret this process uses (``EMBER_CLUSTER_TOKEN``), or None."""
    return os.environ.get(TOKEN_VARIABLE) or None


def cluster_keys(token: str | None = None) -> ClusterKeys | None:
    """The keys for ``token`` (default: this process's secret); None when there is no secret."""
    token = token or current_token()
    if not token:
        return None
    keys = _keys.get(token)
    if keys is None:
        keys = _keys[token] = ClusterKeys(token)
    return keys


class _Authenticator(threading.Thread):
    """The ZAP handler of one ZeroMQ context: admits a Curve client only if its public key is the
    one derived from this process's cluster secret.

    A plain thread on a REP socket: handshakes are rare (one per connection) and answering them
    here keeps the services' loops untouched. libzmq accepts every Curve client when no handler
    is bound, so the handler is bound before the context makes any other socket."""

    def __init__(self, ctx: zmq.Context):
        super().__init__(name="ember-zap", daemon=True)
        self.socket = ctx.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(ZAP_ENDPOINT)

    def run(self) -> None:
        sock = self.socket
        try:
            while True:
                request = sock.recv_multipart()
                version, request_id = request[0], request[1]
                sock.send_multipart([version, request_id, *self.decide(request)])
        except zmq.ContextTerminated:
            sock.close(0)
        except zmq.ZMQError:
            pass  # the context went away under us (a forked child's copy, say)

    @staticmethod
    def decide(request: list) -> list:
        """[status code, status text, user id, metadata] for one ZAP request."""
        domain, mechanism, credentials = request[2], request[5], request[6:]
        if domain in _local_domains and mechanism == b"NULL":
            return [b"200", b"OK", b"ember", b""]  # only reachable through our 0700 directory
        admitted = _admitted.get(domain)
        if admitted is not None and mechanism == b"CURVE" and credentials and hmac.compare_digest(
            credentials[0], admitted
        ):
            return [b"200", b"OK", b"ember", b""]
        return [b"400", b"not a holder of this cluster's secret", b"", b""]


_SNDMORE = int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
_send = zmq.Socket.__mro__[1].send  # libzmq's send and recv as pyzmq's Cython backend binds them
_recv = zmq.Socket.__mro__[1].recv


class Socket(zmq.Socket):
    """pyzmq's socket with lean multipart send and receive, the calls on every message's path.

    pyzmq's own versions check each part's type in Python and build enum flags per part: 5-7 us a
    small message here, against under 2 us for these, which a synchronous call pays four times over
    (both ends send and receive). libzmq still refuses a part that is not a buffer (TypeError).

    Every call that may process the socket's pending commands (send, receive, poll) puts the socket
    in ``loop_touched``, the set of the event loop that polls it (service.EventLoop): such a call may
    have taken the command that announced a message, after which the socket's ZMQ_FD does not signal
    for it, so the loop asks libzmq about these sockets before it sleeps."""

    loop_touched = None  # set by EventLoop.add_socket

    def send_multipart(self, msg_parts, flags=0, copy=True, track=False, **kwargs):
        if self.loop_touched is not None:
            self.loop_touched.add(self)
        more = flags | _SNDMORE
        for part in msg_parts[:-1]:
            _send(self, part, more, copy=copy, track=track)
        return _send(self, msg_parts[-1], flags, copy=copy, track=track)

    def send(self, data, flags=0, copy=True, track=False, **kwargs):
        if self.loop_touched is not None:
            self.loop_touched.add(self)
        return super().send(data, flags, copy=copy, track=track, **kwargs)

    def recv(self, flags=0, copy=True, track=False):
        if self.loop_touched is not None:
            self.loop_touched.add(self)
        return super().recv(flags, copy=copy, track=track)

    def poll(self, timeout=None, flags=zmq.POLLIN):
        if self.loop_touched is not None:
            self.loop_touched.add(self)
        return super().poll(timeout, flags)

    def recv_multipart(self, flags=0, copy=True, track=False):
        if self.loop_touched is not None:
            self.loop_touched.add(self)
        frame = _recv(self, flags, copy=copy, track=track)
        parts = [frame]
        while frame.more if not copy else self.getsockopt(_RCVMORE):
            frame = _recv(self, flags, copy=copy, track=track)
            parts.append(frame)
        return parts


class _Context(zmq.Context):
    _socket_class = Socket


_context = None
_context_lock = threading.Lock()


def context() -> zmq.Context:
    """The process-wide ZeroMQ context, with its ZAP handler (created on first use, recreated after
    a fork)."""
    global _context
    with _context_lock:
        if _context is None or _context.closed:
            ctx = _Context()
            _Authenticator(ctx).start()
            _context = ctx
        return _context


_forgotten: list = []


def forget_context() -> None:
    """In a forked child: drop the parent's context without terminating it (see worker_process)."""
    global _context
    if _context is not None:
        _forgotten.append(_context)
    _context = None


def _require_keys(token: str | None) -> ClusterKeys:
    keys = cluster_keys(token)
    if keys is None:
        raise MissingSecretError(
            f"This process has no Ember cluster secret ({TOKEN_VARIABLE}): every Ember socket admits only "
            "holders of its cluster's secret. ember.init() and `ember start` make one; a process that joins a "
            f"cluster takes it from {TOKEN_VARIABLE} or from the cluster file of its user's runtime directory."
        )
    return keys


def _secure_server(sock: zmq.Socket, token: str | None) -> ClusterKeys:
    try:
        keys = _require_keys(token)
    except MissingSecretError:
        sock.close(0)
        raise
    # The domain names the secret (by its server key, which is no secret) so ZAP knows whom to admit.
    domain = b"ember-" + keys.server_public[:20]
    _admitted[domain] = keys.client_public_raw
    sock.setsockopt(zmq.ZAP_DOMAIN, domain)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.server_secret)
    return keys


def _local_ipc() -> bool:
    return os.environ.get(LOCAL_IPC_VARIABLE, "1") != "0"


def _ipc_path(keys: ClusterKeys, address: str) -> str:
    """Where the server at ``address`` (host:port) of the cluster with ``keys`` also listens on this
    machine. The name hashes the secret's server key, so a process with a wrong secret looks for a
    name that does not exist and takes the Curve path, where it is refused."""
    tag = hashlib.sha256(keys.server_public).hexdigest()[:16]
    return os.path.join(_local_dir(), f"{tag}-{address.replace(':', '-')}")


def _local_dir() -> str:
    if not _ipc_dir:
        from ember.runtime.runtime_dir import private_subdir

        _ipc_dir.append(private_subdir("ipc"))
    return _ipc_dir[0]


def _bind_local(sock: zmq.Socket, keys: ClusterKeys, address: str) -> None:
    """Also listen on an ipc:// socket in this user's 0700 runtime directory, without Curve.

    Only processes of this user can reach it (the directory's permissions do the authenticating), so
    node-local traffic pays no encryption; processes on other machines, or of other users, reach the
    TCP endpoint, which admits only holders of the secret. libzmq copies a socket's options into each
    endpoint when it binds, so this endpoint keeps Curve off while the TCP one keeps it on."""
    if not _local_ipc():
        return
    path = _ipc_path(keys, address)
    try:
        os.unlink(path)  # left by a process of ours that was killed with this port
    except FileNotFoundError:
        pass
    domain = b"ember-local-" + keys.server_public[:20]
    _local_domains.add(domain)
    sock.setsockopt(zmq.CURVE_SERVER, 0)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain)
    sock.bind(f"ipc://{path}")


def sweep_stale_local_sockets() -> int:
    """Remove this user's ipc:// socket files that nothing listens on any more (their process was
    killed, or exited without closing); returns how many. Listening sockets are in /proc/net/unix."""
    if not _local_ipc():
        return 0
    directory = _local_dir()
    # The directory first: a file made after the listing is not looked at, and one made before it
    # has its socket bound (so listed in /proc/net/unix) by the time we read that.
    names = os.listdir(directory)
    try:
        with open("/proc/net/unix") as f:
            bound = {fields[-1] for fields in map(str.split, f.readlines()[1:]) if len(fields) >= 8}
    except OSError:
        return 0  # not Linux: leave them, a new bind replaces a stale file of the same name
    removed = 0
    for name in names:
        path = os.path.join(directory, name)
        if path not in bound:
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def local_link_path(address: str, token: str | None = None) -> str | None:
    """Where the worker whose task socket is at ``address`` (host:port) takes local links
    (:mod:`ember.runtime.local_link`); None without a secret. Named as its ipc:// endpoint is, so
    only holders of the same secret find it."""
    keys = cluster_keys(token)
    if keys is None:
        return None
    return _ipc_path(keys, address) + ".calls"


def _endpoint(keys: ClusterKeys, address: str) -> str:
    """ipc:// when the server listens on this machine for this user and this secret, else tcp://."""
    if _local_ipc():
        path = _ipc_path(keys, address)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                return f"ipc://{path}"
        except FileNotFoundError:
            pass
    return f"tcp://{address}"


def _secure_client(sock: zmq.Socket, token: str | None, address: str) -> str:
    """Set ``sock`` up to reach ``address``; returns the endpoint to connect to."""
    try:
        keys = _require_keys(token)
    except MissingSecretError:
        sock.close(0)
        raise
    endpoint = _endpoint(keys, address)
    if endpoint.startswith("ipc://"):
        return endpoint
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.client_public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.client_secret)
    return endpoint


def _configure(sock: zmq.Socket) -> zmq.Socket:
    sock.setsockopt(zmq.LINGER, 0)
    # Control traffic must not be dropped silently under load: block senders rather than drop.
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    return sock


def bind_router(host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> tuple[zmq.Socket, str]:
    """A ROUTER bound on ``host`` (a random free port when ``port`` is 0); returns (socket, "host:port")."""
    sock = _configure(context().socket(zmq.ROUTER))
    sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
    keys = _secure_server(sock, token)
    if port:
        sock.bind(f"tcp://{host}:{port}")
    else:
        port = sock.bind_to_random_port(f"tcp://{host}")
    _bind_local(sock, keys, f"{host}:{port}")
    return sock, f"{host}:{port}"


def bind_publisher(host: str = "127.0.0.1", token: str | None = None) -> tuple[zmq.Socket, str]:
    sock = context().socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    keys = _secure_server(sock, token)
    port = sock.bind_to_random_port(f"tcp://{host}")
    _bind_local(sock, keys, f"{host}:{port}")
    return sock, f"{host}:{port}"


def connect_dealer(address: str, identity: bytes | None = None, token: str | None = None) -> zmq.Socket:
    sock = _configure(context().socket(zmq.DEALER))
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    sock.connect(_secure_client(sock, token, address))
    return sock


def connect_subscriber(address: str, topics=(b"",), token: str | None = None) -> zmq.Socket:
    sock = context().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    endpoint = _secure_client(sock, token, address)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic)
    sock.connect(endpoint)
    return sock


def drain_subscriber(sock: zmq.Socket, apply) -> int:
    """Apply every message waiting on SUB socket ``sock`` as ``apply(topic, decoded body)``, without
    blocking; a message that does not decode, or that ``apply`` rejects, is logged and dropped (the
    event hub's subscribers must outlive a bad publisher). Returns the number of messages read."""
    count = 0
    while True:
        try:
            topic, body = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return count
        count += 1
        try:
            apply(topic, _decode_event(body))
        except Exception:
            logger.debug("malformed event dropped", exc_info=True)


def connect_checked(address: str, timeout: float = 2.0, token: str | None = None) -> zmq.Socket:
    """``connect_dealer``, then wait up to ``timeout`` s for the handshake. Raises AuthenticationError
    when the server refuses it (we lack its secret, or it is not an Ember server); returns the socket
    once the handshake succeeded, or when nothing answered in time (the caller's own wait says so)."""
    sock = connect_dealer(address, token=token)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | _HANDSHAKE_FAILED)
    try:
        # Imported here: zmq.utils.monitor imports asyncio (20 ms), which no other process needs.
        from zmq.utils.monitor import recv_monitor_message

        refused = monitor.poll(timeout * 1000) and recv_monitor_message(monitor)["event"] & _HANDSHAKE_FAILED
    finally:
        sock.disable_monitor()
        monitor.close(0)
    if refused:
        sock.close(0)
        raise AuthenticationError(f"The server at {address} refused the handshake.")
    return sock


def watch_disconnects(sock: zmq.Socket) -> zmq.Socket:
    """A socket that receives one message each time ``sock`` loses a connection."""
    return sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
