"""Calls to a worker on this machine over a plain Unix stream socket, without ZeroMQ.

A synchronous call is a ping-pong between the caller and the worker; over ZeroMQ each message
crosses two extra threads (libzmq's I/O thread in the sender and in the receiver), each a wake-up
that costs 10-50 us on two busy cores. A raw Unix socket ping-pong between two processes takes a
sixth of a pyzmq DEALER/ROUTER one here, and the sender's thread writes straight into the kernel,
so nothing else has to run for its message to arrive. Only the call path uses it (an owner's
``execute_task`` and ``actor_call`` messages to a worker's task socket, and their replies); every
other connection stays on ZeroMQ.

The listening socket lives next to the worker's ipc:// endpoint, in this user's 0700 runtime
directory, under a name that hashes the cluster secret (``transport.local_link_path``): only
processes of this user holding this secret find it, as for ipc://. ``EMBER_LOCAL_LINKS=0`` (or
``EMBER_LOCAL_IPC=0``) turns it off: calls then go over ZeroMQ as before.

A message is the same list of frames a ZeroMQ multipart message would be, framed as: body length
(u32), frame count (u16), each frame's length (u32), the frames. Only the thread that runs the
owning event loop touches a link, as for a ZeroMQ socket; a send the kernel cannot take at once is
kept in order and finished when the socket is writable again.
"""

import collections
import errno
import itertools
import logging
import os
import socket
import struct

logger = logging.getLogger(__name__)

LINKS_VARIABLE = "EMBER_LOCAL_LINKS"
_LENGTH = struct.Struct("<I")
_COUNT = struct.Struct("<H")
_PREFIX = _LENGTH.size + _COUNT.size
_READ_SIZE = 1 << 18
_SPLIT_AT = 65536  # payload frames from this size on are handed out as zero-copy memoryviews, as unwrap() does
_MAX_BODY = (1 << 32) - 1
_GATHER_MAX = 64  # buffers per sendmsg (the kernel takes up to IOV_MAX, 1024 on Linux)


def enabled() -> bool:
    """Whether workers listen for local links and owners use them (see the module docstring)."""
    return os.environ.get(LINKS_VARIABLE, "1") != "0" and os.environ.get("EMBER_LOCAL_IPC", "1") != "0"


def encode(parts) -> list:
    """The buffers to write for one message of ``parts`` (bytes-like frames)."""
    sizes = [memoryview(part).nbytes for part in parts]
    count = len(sizes)
    if count > 0xFFFF:
        raise ValueError(f"a message of {count} frames is more than a local link carries")
    body = _COUNT.size + 4 * count + sum(sizes)
    if body > _MAX_BODY:
        raise ValueError(f"a message of {body} bytes is more than a local link carries")
    return [struct.pack(f"<IH{count}I", body, count, *sizes), *parts]


def decode(data, start: int, on_message) -> int:
    """Call ``on_message(frames)`` for each whole message in ``data`` from ``start``; returns where
    the first incomplete one begins (``len(data)`` when none is)."""
    end = len(data)
    view = None
    while end - start >= _PREFIX:
        (body,) = _LENGTH.unpack_from(data, start)
        if end - start - _LENGTH.size < body:
            break
        (count,) = _COUNT.unpack_from(data, start + _LENGTH.size)
        sizes = struct.unpack_from(f"<{count}I", data, start + _PREFIX)
        offset = start + _PREFIX + 4 * count
        frames = []
        for size in sizes:
            if size < _SPLIT_AT or not frames:  # the header is always bytes, as unwrap() gives it
                frames.append(data[offset : offset + size])
            else:
                if view is None:
                    view = memoryview(data)
                frames.append(view[offset : offset + size])
            offset += size
        if offset != start + _LENGTH.size + body:
            raise ValueError("a local link message whose frames do not add up to its length")
        start = offset
        on_message(frames)
    return start


class Link:
    """One end of a local link: ``send_multipart`` as on a ZeroMQ socket, and ``on_readable`` /
    ``on_writable`` for the event loop that polls ``fileno()``. ``on_frames(frames)`` gets each
    message; ``on_closed(link)`` is called once when the other end is gone (or the link broke)."""

    def __init__(self, sock: socket.socket, on_frames, on_closed=None):
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.on_frames = on_frames
        self.on_closed = on_closed
        self.closed = False
        self.address = None  # whom it reaches (the caller's bookkeeping)
        self._pending = bytearray()  # the start of a message not yet read whole
        self._need = 0  # how many bytes _pending must hold before that message is whole
        self._out: collections.deque = collections.deque()  # buffers the kernel has not taken yet
        self.want_write = None  # set by EventLoop.add_link: called with True/False when _out fills/empties

    def fileno(self) -> int:
        return self.fd

    def send_multipart(self, parts, flags=0, copy=True, track=False) -> None:
        """Send one message (``flags``, ``copy`` and ``track`` are accepted for ZeroMQ's signature)."""
        if self.closed:
            return  # as ZeroMQ does for a peer that is gone: the caller learns of its death elsewhere
        buffers = encode(parts)
        if self._out:
            self._out.extend(buffers)
            return
        total = sum(memoryview(b).nbytes for b in buffers)
        try:
            # Small messages, and messages of more frames than one sendmsg takes, go out joined.
            gather = total > _SPLIT_AT and len(buffers) <= _GATHER_MAX
            sent = self.sock.sendmsg(buffers) if gather else self.sock.send(b"".join(buffers))
        except BlockingIOError:
            sent = 0
        except OSError as error:
            self._broken(error)
            return
        if sent < total:
            self._queue_rest(buffers, sent)

    def _queue_rest(self, buffers, sent: int) -> None:
        self._out.extend(buffers)
        self._drop_sent(sent)
        if self.want_write is not None:
            self.want_write(self, True)

    def _drop_sent(self, sent: int) -> None:
        """The kernel took ``sent`` bytes from the front of what is queued."""
        out = self._out
        while sent and out:
            size = memoryview(out[0]).nbytes
            if sent >= size:
                sent -= size
                out.popleft()
            else:
                out[0] = memoryview(out[0]).cast("B")[sent:]
                sent = 0

    def on_writable(self, fd=None) -> None:
        out = self._out
        while out:
            try:
                sent = self.sock.sendmsg(list(itertools.islice(out, _GATHER_MAX)))
            except BlockingIOError:
                return
            except OSError as error:
                self._broken(error)
                return
            self._drop_sent(sent)
        if self.want_write is not None:
            self.want_write(self, False)

    def flush_blocking(self, timeout: float = 5.0) -> None:
        """Write what is queued, waiting for the peer (a worker about to exit sends its last reply)."""
        if not self._out or self.closed:
            return
        try:
            self.sock.settimeout(timeout)
            for buffer in self._out:
                self.sock.sendall(buffer)
        except OSError:
            pass
        self._out.clear()

    def on_readable(self, fd=None) -> None:
        while not self.closed:
            try:
                data = self.sock.recv(_READ_SIZE)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError as error:
                self._broken(error)
                return
            if not data:
                self._broken(None)
                return
            more = len(data) == _READ_SIZE
            if self._pending:
                # A large message comes in many reads: gather them, and parse once it is whole.
                self._pending += data
                if len(self._pending) < self._need:
                    if more:
                        continue
                    return
                data, self._pending = bytes(self._pending), bytearray()
            try:
                used = decode(data, 0, self.on_frames)
            except (ValueError, struct.error) as error:
                self._broken(error)
                return
            if used < len(data):
                self._pending = bytearray(memoryview(data)[used:])
                rest = len(self._pending)
                self._need = _LENGTH.size + _LENGTH.unpack_from(self._pending)[0] if rest >= _LENGTH.size else _PREFIX
            if not more:
                return  # the kernel had no more: do not pay a recv that fails

    def _broken(self, error) -> None:
        if error is not None and getattr(error, "errno", None) not in (errno.ECONNRESET, errno.EPIPE):
            logger.warning("local link %d broke: %s", self.fd, error)
        self.close()
        if self.on_closed is not None:
            self.on_closed(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._out.clear()
            self.sock.close()


def listen(path: str) -> socket.socket:
    """A listening Unix socket at ``path`` (a stale file of that name is replaced)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(256)
    server.setblocking(False)
    return server


def connect(path: str) -> socket.socket | None:
    """A socket connected to the listener at ``path``, or None when nothing listens there, or its
    queue of connections is full (a worker busy in a long call accepts none meanwhile): the caller
    then takes ZeroMQ rather than block its loop."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock
