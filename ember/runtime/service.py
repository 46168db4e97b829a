"""What every service shares: the :class:`Dispatcher` (a table from op to handler, each header
validated where it enters, error replies), the ROUTER :class:`Service` that the head and the node
manager are, and the poll loop that can run several services in one process.

A handler receives ``(identity, header, frames)``; whatever it returns (a dict, or a (dict, frames)
pair) is sent back as the reply to the request id. A bad message or a handler that raises is
logged and answered with an error message; it never stops the loop.
"""

import logging
import os
import time

import zmq

from ember.runtime import messages, protocol, transport

logger = logging.getLogger(__name__)


class Dispatcher:
    """The one place a received request becomes a handler call, for every service of every process.

    ``table`` maps each op to ``handler(identity, header, payload)``. With ``schema`` (a service name
    of :mod:`ember.runtime.messages`) the header is validated where it enters and the handler gets
    its op's Struct; a message that does not fit is refused with a typed error reply (``BadMessage``)
    and never reaches a handler. Without one, the handler gets the header as a dict (services not yet
    moved to typed messages). Whatever a handler returns (a dict, or a (dict, frames) pair) is the
    reply; a handler that raises is logged and answered with an error. Nothing a peer sends stops
    the loop that calls ``dispatch``.
    """

    def __init__(self, table: dict, send, schema: str | None = None, name: str = "service"):
        self.table = table
        self.send = send  # send(identity, header dict, frames)
        self.schema = schema
        self.name = name

    def dispatch(self, identity: bytes, frames: list) -> None:
        try:
            header, payload = self._decode(frames)
        except messages.BadMessage as error:
            logger.warning("%s: refused a message from %r: %s", self.name, identity, error)
            if error.rid is not None:
                self.reply_error(identity, error.rid, error)
            return
        op, rid = (messages.op_of(header), header.rid) if self.schema else (header["op"], header.get("rid"))
        try:
            result = self.table[op](identity, header, payload)
        except Exception as error:
            logger.exception("%s: handler for %s failed", self.name, op)
            if rid is not None:
                self.reply_error(identity, rid, error)
            return
        if result is not None and rid is not None:
            body, reply_frames = result if isinstance(result, tuple) else (result, ())
            self.reply(identity, rid, body, reply_frames)

    def _decode(self, frames: list):
        if self.schema is not None:
            return messages.decode_header(self.schema, frames[0]), frames[1:]
        try:
            header, payload = protocol.decode(frames)
        except Exception as error:
            raise messages.BadMessage(None, f"not a msgpack header: {error}") from None
        if not isinstance(header, dict) or not isinstance(header.get("op"), str):
            raise messages.BadMessage(None, "a header must be a map with an op")
        if header["op"] not in self.table:
            raise messages.BadMessage(header["op"], f"unknown op {header['op']!r}", header.get("rid"))
        return header, payload

    def reply(self, identity: bytes, rid, body: dict | None = None, frames=()) -> None:
        header = {"op": protocol.REPLY, "rid": rid}
        if body:
            header.update(body)
        self.send(identity, header, frames)

    def reply_error(self, identity: bytes, rid, error: Exception) -> None:
        """Answer request ``rid`` with an error; the caller raises it as its type when it knows it."""
        self.send(identity, {"op": protocol.ERROR, "rid": rid, "error": str(error), "etype": type(error).__name__})


class Service:
    """A ZeroMQ ROUTER service; subclasses fill ``handlers`` with {op: method name} and may name
    the ``schema`` (a service of :mod:`ember.runtime.messages`) their requests are validated against."""

    handlers: dict = {}
    schema: str | None = None

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.router, self.address = transport.bind_router(host, port)
        self.table = {op: getattr(self, name) for op, name in self.handlers.items()}
        self.dispatcher = Dispatcher(self.table, self.send, self.schema, type(self).__name__)

    def handle_frames(self, frames: list) -> None:
        self.dispatcher.dispatch(frames[0], frames[1:])

    def reply(self, identity: bytes, rid, body: dict | None = None, frames=()) -> None:
        self.dispatcher.reply(identity, rid, body, frames)

    def reply_error(self, identity: bytes, rid, error: Exception) -> None:
        """Answer request ``rid`` with an error; the caller raises it as its type when it knows it."""
        self.dispatcher.reply_error(identity, rid, error)

    def send(self, identity: bytes, header: dict, frames=()) -> None:
        try:
            self.router.send_multipart([identity, *protocol.encode(header, frames)], copy=False)
        except zmq.ZMQError as error:
            logger.warning("could not send %s to %r: %s", header.get("op"), identity, error)

    def tick(self, now: float) -> None:
        """Periodic work; called by the loop at least every ``EventLoop.TICK`` seconds."""

    def close(self) -> None:
        self.router.close(0)


class EventLoop:
    """Polls the sockets of one or more services (and raw file descriptors) until stopped."""

    TICK = 0.1

    def __init__(self):
        self.poller = zmq.Poller()
        self.services: list[Service] = []
        self.sockets: dict = {}
        self.fd_handlers: dict = {}
        self.running = True

    def add_service(self, service: Service) -> None:
        self.services.append(service)
        self.add_socket(service.router, service.handle_frames)

    def add_socket(self, sock, on_frames, raw: bool = False) -> None:
        """Call ``on_frames(frames)`` for each message on ``sock``; ``raw``: as the zmq.Frame objects
        received (their properties, such as the connection they came from, readable), else unwrapped."""
        self.sockets[sock] = (on_frames, raw)
        self.poller.register(sock, zmq.POLLIN)

    def remove_socket(self, sock) -> None:
        if self.sockets.pop(sock, None) is not None:
            self.poller.unregister(sock)

    def add_fd(self, fd: int, on_readable) -> None:
        self.fd_handlers[fd] = on_readable
        self.poller.register(fd, zmq.POLLIN)

    def run(self) -> None:
        next_tick = 0.0
        while self.running:
            now = time.monotonic()
            if now >= next_tick:
                for service in self.services:
                    try:
                        service.tick(now)
                    except Exception:
                        logger.exception("tick of %s failed", type(service).__name__)
                next_tick = now + self.TICK
            events = self.poller.poll(max(0.0, next_tick - time.monotonic()) * 1000)
            for target, _ in events:
                if isinstance(target, int):
                    self.fd_handlers[target](target)
                    continue
                entry = self.sockets.get(target)
                if entry is None:
                    continue
                on_frames, raw = entry
                # Drain what is queued without blocking, so a burst costs one poll.
                for _ in range(1000):
                    try:
                        frames = target.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    try:
                        on_frames(frames if raw else unwrap(frames))
                    except Exception:
                        logger.exception("error while handling a message")
                    if not self.running or target not in self.sockets:
                        break  # stopped, or the handler closed this socket

    def stop(self) -> None:
        self.running = False


def unwrap(frames: list) -> list:
    """Small frames as bytes (cheap to parse); large payloads stay as zero-copy memoryviews."""
    return [f.bytes if i == 0 or len(f) < 65536 else f.buffer for i, f in enumerate(frames)]


def read_eof(fd: int) -> bool:
    """Read what is pending on a pipe; True once the other end has closed."""
    try:
        return os.read(fd, 4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
