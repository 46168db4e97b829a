"""What every service shares: the :class:`Dispatcher` (a table from op to handler, each header
validated where it enters, error replies), the ROUTER :class:`Service` that the head and the node
manager are, and the :class:`EventLoop` that polls a process's sockets: several services in one
process (the head and a node manager), or a worker's task socket, with calls from other threads
(``call_soon``) woken through the loop's own pipe.

A handler receives ``(identity, header, frames)``; whatever it returns (a dict, or a (dict, frames)
pair) is sent back as the reply to the request id. A bad message or a handler that raises is
logged and answered with an error message; it never stops the loop.
"""

import collections
import heapq
import logging
import math
import os
import select
import time

import zmq

from ember.runtime import messages, protocol, transport
from ember.runtime.settings import number_from_env

logger = logging.getLogger(__name__)

_get_option = zmq.Socket.get  # getsockopt without the sugar layer's per-call keyword handling
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_FD = int(zmq.FD)
_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR | select.POLLNVAL


class Dispatcher:
    """The one place a received request becomes a handler call, for every service of every process.

    ``table`` maps each op to ``handler(identity, header, payload)``. With ``schema`` (a service name
    of :mod:`ember.runtime.messages`) the header is validated where it enters and the handler gets
    its op's Struct; a message that does not fit is refused with a typed error reply (``BadMessage``)
    and never reaches a handler. Without one, the handler gets the header as a dict (services not yet
    moved to typed messages). Whatever a handler returns (a dict, or a (dict, frames) pair) is the
    reply; a handler that raises is logged and answered with an error. Nothing a peer sends stops
    the loop that calls ``dispatch``.

    With ``send_frames``, a handler's reply is already encoded (a list of frames, sent as it is with
    ``send_frames(identity, frames)``): for a service whose replies are messages of their own, not a
    ``reply`` (a worker answers with ``task_result``).
    """

    def __init__(self, table: dict, send, schema: str | None = None, name: str = "service", send_frames=None):
        self.table = table
        self.send = send  # send(identity, header dict, frames)
        self.schema = schema
        self.name = name
        self.send_frames = send_frames

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
        if result is None or rid is None:
            return
        if self.send_frames is not None:
            self.send_frames(identity, result)
        else:
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


class SpinPolicy:
    """How long an event loop polls without sleeping before it blocks: a plain state machine fed
    with how each wait ended, plus a look at whether a CPU is free to spin on.

    Waking a process that sleeps in ``poll`` costs the waker a cross-CPU wake-up and the sleeper a
    context switch: on this project's virtual machines a blocking ping-pong over a Unix socket takes
    about 80 us a round trip against 6 us when the receiver polls without sleeping. A synchronous
    call (``get(f.remote())``, an actor call waited on) pays that twice, once each way. So a driver
    and a worker poll for up to ``limit`` seconds before they sleep, but only
    - while waits are short: a wait longer than ``limit`` (an idle worker, a long task) turns
      spinning off until a wait is short again, so a process spins at most ``limit`` per long wait
      and never while idle;
    - while no CPU is wanted by someone else: with more runnable threads than CPUs (``/proc/loadavg``
      counts them), a spinner would take the CPU of the very process it waits for, or of any other.
    """

    def __init__(self, limit: float):
        if limit < 0:
            raise ValueError(f"a spin limit is a number of seconds >= 0, got {limit!r}")
        self.limit = limit
        self.window = 0.0  # how long the next wait spins: off until a wait proves short
        self._cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        try:
            self._loadavg = os.open("/proc/loadavg", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._loadavg = None  # no way to tell whether a CPU is free: never spin
            self.limit = 0.0

    def waited(self, seconds: float, ready: bool) -> None:
        """A wait ended after ``seconds``; ``ready``: something arrived (else it timed out)."""
        self.window = self.limit if ready and seconds <= self.limit else 0.0

    def cpu_free(self) -> bool:
        """Whether spinning now takes no CPU that another runnable thread wants (we are one of the
        runnable threads counted)."""
        if self._loadavg is None:
            return False
        try:
            running = int(os.pread(self._loadavg, 64, 0).split()[3].split(b"/")[0])
        except (OSError, ValueError, IndexError):
            return False
        return running <= self._cpus

    def close(self) -> None:
        if self._loadavg is not None:
            os.close(self._loadavg)
            self._loadavg = None

    @classmethod
    def from_environment(cls, default_us: float = 200.0) -> "SpinPolicy | None":
        """The policy ``EMBER_SPIN_US`` asks for (microseconds, up to a second; 0 turns spinning off)."""
        micros = number_from_env("EMBER_SPIN_US", float, default_us, 0, 1e6, "a number of microseconds")
        return cls(micros / 1e6) if micros > 0 else None


class EventLoop:
    """One poll loop for a process's sockets, raw file descriptors and calls from other threads.

    ``run`` polls until ``stop``; ``run_once`` polls one round, for a thread that drives the loop
    itself (one thread at a time: the caller keeps others out; a core client's waiting user thread
    leads its loop this way). Services added with ``add_service`` tick at least every ``TICK``
    seconds; a loop without services sleeps until something happens. ``after_round``, when set, runs
    at the end of every round on the loop's thread (a client sends what the round accumulated); run
    before a poll, for work queued meanwhile, it returns False when nothing a thread waits for has
    completed, so that poll may block.
    ZeroMQ sockets are polled through their ZMQ_FD, in one ``select.poll`` with the raw descriptors:
    libzmq is asked about a socket (ZMQ_EVENTS, a syscall or two) only when its descriptor fired or
    when something sent, received or polled on it since the loop last asked (see transport.Socket:
    such a call may have taken the command that announced a message, and the descriptor does not
    signal again for it). zmq_poll instead asked about every socket twice per round.
    ``call_soon``, ``wake`` and ``nudge`` are the thread-safe entries: they wake the poll through the loop's own
    pipe, once per round however many calls arrive, and only while a thread is in the poll (or about
    to enter it): otherwise whoever runs the next round finds the work before it polls, so a loop
    led by the thread that queued the call (a synchronous ``get(f.remote())``) pays no pipe write,
    no pipe read and no extra round. A signal handler writes to ``wake_fd`` itself.
    """

    TICK = 0.1

    def __init__(self):
        self.poller = select.poll()
        self.services: list[Service] = []
        self.sockets: dict = {}
        self._socket_fds: dict = {}  # ZMQ_FD -> its socket
        # Sockets to ask libzmq about before the next poll: touched since the last look (their sends
        # and receives add them, see transport.Socket), and sockets that do not say when they are.
        self._touched: set = set()
        self._untracked: set = set()
        self.fd_handlers: dict = {}
        self.fd_writers: dict = {}  # fd -> on_writable(fd), while the fd has output waiting
        self.running = True
        self._next_tick = 0.0
        self._calls: collections.deque = collections.deque()
        self._timers: list = []  # heap of (monotonic deadline, sequence, fn, args), see call_later
        self._timer_seq = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)  # a full pipe already holds a wake-up: never block a sender
        self._woken = False  # a wake-up byte is in the pipe (or on its way)
        # A thread is in the poll, or past its last look at pending work before it: only then must a
        # wake-up go through the pipe. Set before that look and a waker sets _pending before it reads
        # this (Dekker's order; the GIL orders the two), so no wake-up is lost between the two.
        self._polling = False
        self._pending = False  # wake() while nobody polled: the next round must not block
        self._nudged = False  # nudge() while nobody polled: the next round does after_round first
        self.wake_fd = self._wake_w
        self.after_round = None
        self.spin: SpinPolicy | None = None  # set by a process whose waits are short (see SpinPolicy)
        self.add_fd(self._wake_r, self._on_wake)

    def add_service(self, service: Service) -> None:
        self.services.append(service)
        self.add_socket(service.router, service.handle_frames)

    def add_socket(self, sock, on_frames, raw: bool = False) -> None:
        """Call ``on_frames(frames)`` for each message on ``sock``; ``raw``: as the zmq.Frame objects
        received (their properties, such as the connection they came from, readable), else unwrapped."""
        if sock in self.sockets:
            self.remove_socket(sock)
        fd = sock.getsockopt(_FD)
        self.sockets[sock] = (on_frames, raw)
        self._socket_fds[fd] = sock
        self.poller.register(fd, select.POLLIN)
        if isinstance(sock, transport.Socket):
            object.__setattr__(sock, "loop_touched", self._touched)  # not a socket option
        else:
            self._untracked.add(sock)  # a plain pyzmq socket: looked at every round
        self._touched.add(sock)  # messages may be queued already

    def remove_socket(self, sock) -> None:
        if self.sockets.pop(sock, None) is None:
            return
        self._touched.discard(sock)
        self._untracked.discard(sock)
        if getattr(sock, "loop_touched", None) is self._touched:
            object.__setattr__(sock, "loop_touched", None)
        for fd, known in list(self._socket_fds.items()):
            if known is sock:
                del self._socket_fds[fd]
                self.poller.unregister(fd)

    def add_fd(self, fd: int, on_readable) -> None:
        self.fd_handlers[fd] = on_readable
        self.poller.register(fd, select.POLLIN)

    def add_link(self, link) -> None:
        """Poll a local link (``local_link.Link``): its input, and its output while the kernel holds
        some back. ``remove_fd(link.fd)`` stops it."""
        link.want_write = self._link_wants_write
        self.add_fd(link.fd, link.on_readable)

    def _link_wants_write(self, link, waiting: bool) -> None:
        if waiting:
            self.watch_writable(link.fd, link.on_writable)
        else:
            self.unwatch_writable(link.fd)

    def remove_fd(self, fd: int) -> None:
        self.fd_writers.pop(fd, None)
        if self.fd_handlers.pop(fd, None) is not None:
            self.poller.unregister(fd)

    def watch_writable(self, fd: int, on_writable) -> None:
        """Also call ``on_writable(fd)`` when ``fd`` (added with ``add_fd``) can take output, until
        ``unwatch_writable``: for a descriptor whose sends the kernel did not take whole."""
        if fd in self.fd_handlers and fd not in self.fd_writers:
            self.fd_writers[fd] = on_writable
            self.poller.modify(fd, select.POLLIN | select.POLLOUT)

    def unwatch_writable(self, fd: int) -> None:
        if self.fd_writers.pop(fd, None) is not None and fd in self.fd_handlers:
            self.poller.modify(fd, select.POLLIN)

    def call_soon(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the loop's thread, in the order of calls; safe from any thread."""
        self._calls.append((fn, args))
        if self._polling and not self._woken:
            self._woken = True
            self._write_wake()

    def call_later(self, delay: float, fn, *args) -> None:
        """Run ``fn(*args)`` on the loop's thread ``delay`` seconds from now (or a little later); only
        from the loop's thread."""
        self._timer_seq += 1
        heapq.heappush(self._timers, (time.monotonic() + delay, self._timer_seq, fn, args))

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, fn, args = heapq.heappop(self._timers)
            self._calls.append((fn, args))
        if self._calls:
            self.run_calls()

    def wake(self) -> None:
        """Make the loop end its poll (or not block in the next one) and run a round; safe from any
        thread and from finalizers (no lock: flag tests and at most one pipe write per round)."""
        self._pending = True
        if self._polling and not self._woken:
            self._woken = True
            self._write_wake()

    def nudge(self) -> None:
        """There is work for ``after_round`` (a release queued by a finalizer, say): a polling loop is
        woken for it, as by ``wake``; else the next round does it before it polls, and that poll may
        still block. Safe from any thread and from finalizers."""
        self._nudged = True
        if self._polling and not self._woken:
            self._woken = True
            self._write_wake()

    def _write_wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # full (a wake-up is pending anyway) or closed (the loop is gone)

    def _on_wake(self, fd: int) -> None:
        # Drain first, then clear: a call queued between the two is run just below; clearing first
        # could leave the flag set with the pipe empty and every later wake-up skipped.
        read_eof(fd)
        self._woken = False
        self.run_calls()

    def run_calls(self) -> None:
        """On the loop's thread: run the queued calls, and those they queue, now."""
        calls = self._calls
        while calls:
            fn, args = calls.popleft()
            try:
                fn(*args)
            except Exception:
                logger.exception("error in %s", getattr(fn, "__name__", fn))

    def run(self) -> None:
        while self.running:
            self.run_once()

    def run_once(self, limit: float | None = None) -> int:
        """Poll one round: run the calls queued meanwhile, wait up to ``limit`` seconds (None: until
        something happens, or the next tick when there are services), handle what arrived, run the
        calls that queued and due ticks. Returns the number of sockets and descriptors that were ready."""
        try:
            timeout = limit
            if self.services:
                now = time.monotonic()
                if now >= self._next_tick:
                    self._tick(now)
                until_tick = max(0.0, self._next_tick - time.monotonic())
                timeout = until_tick if timeout is None else min(timeout, until_tick)
            if self._timers:
                until_timer = max(0.0, self._timers[0][0] - time.monotonic())
                timeout = until_timer if timeout is None else min(timeout, until_timer)
            # Work queued while nobody polled (no wake-up was written for it) is done before the
            # poll, the round's own work (``after_round``) with it. Then the poll returns at once,
            # as a caller driving rounds until its work is done expects, unless ``after_round`` says
            # nothing that a thread waits for completed: a request queued by the thread now leading
            # goes out in this round and the poll waits for its reply (one round, not two).
            if self._calls or (self._nudged and self.after_round is not None):
                self._nudged = False
                self.run_calls()
                if self.after_round is None or self.after_round() is not False:
                    timeout = 0.0
            self._polling = True
            if self._calls or self._pending or self._nudged:
                timeout = 0.0  # queued after the look above: nobody wrote a wake-up for it
            self._pending = self._nudged = False
            ready = self._ready_sockets()
            if ready:
                timeout = 0.0
            try:
                # Whole milliseconds, rounded up: rounded down, a wait of under 1 ms (the last one
                # before a tick) would poll with 0 and the loop would spin until the tick.
                wait_ms = None if timeout is None else math.ceil(timeout * 1000)
                spin = self.spin
                if spin is None or wait_ms == 0:
                    events = self.poller.poll(wait_ms)
                else:
                    events = self._poll_spinning(spin, wait_ms)
            finally:
                self._polling = False
            count = len(ready)
            for sock in ready:
                self._drain(sock)
                if not self.running:
                    return count
            socket_fds = self._socket_fds
            for fd, mask in events:
                sock = socket_fds.get(fd)
                if sock is not None:
                    if sock in ready:
                        continue  # drained above, which left it touched if messages remain (a full burst)
                    # The descriptor only says that libzmq has news: whether a message waits is
                    # the socket's to say (asking also resets the descriptor).
                    if _get_option(sock, _EVENTS) & _POLLIN:
                        count += 1
                        self._drain(sock)
                    else:
                        self._touched.discard(sock)
                else:
                    count += 1
                    # A handler earlier in this round may have removed the descriptor (a link closed).
                    if mask & select.POLLOUT and fd in self.fd_writers:
                        self.fd_writers[fd](fd)
                    if mask & _READABLE and fd in self.fd_handlers:
                        self.fd_handlers[fd](fd)
                if not self.running:
                    break
            if self._calls:  # queued by handlers on this thread, which wrote no wake-up
                self.run_calls()
            if self._timers:
                self._run_timers()
            if self.after_round is not None:
                self.after_round()
            return count
        finally:
            self._polling = False

    def _ready_sockets(self) -> list:
        """The sockets touched since the last look (or untracked) that hold a message; the others'
        descriptors will signal the next one."""
        touched = self._touched
        if self._untracked:
            touched.update(self._untracked)
        if not touched:
            return []
        ready = []
        while touched:  # popped one by one: a socket touched meanwhile is looked at, not dropped
            sock = touched.pop()
            if _get_option(sock, _EVENTS) & _POLLIN:
                ready.append(sock)
        return ready

    def _poll_spinning(self, spin: "SpinPolicy", wait_ms: int | None) -> list:
        """Poll without sleeping for the policy's window, then block: an answer that comes within
        the window costs no wake-up of a sleeping process."""
        poll = self.poller.poll
        started = time.perf_counter()
        window = spin.window
        events = []
        if window:
            events = poll(0)
            until = started + window
            cpu_free = spin.cpu_free
            while not events and time.perf_counter() < until and cpu_free():
                events = poll(0)
        if not events:
            if wait_ms is not None:  # the spin counts against the caller's limit
                wait_ms = max(0, wait_ms - int((time.perf_counter() - started) * 1000))
            events = poll(wait_ms)
        spin.waited(time.perf_counter() - started, bool(events))
        return events

    def _tick(self, now: float) -> None:
        for service in self.services:
            try:
                service.tick(now)
            except Exception:
                logger.exception("tick of %s failed", type(service).__name__)
        self._next_tick = now + self.TICK

    def _drain(self, sock) -> None:
        entry = self.sockets.get(sock)
        if entry is None:
            return  # removed by a handler earlier in this round
        on_frames, raw = entry
        # Drain what is queued without blocking, so a burst costs one poll.
        for _ in range(1000):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self._touched.discard(sock)  # libzmq said it has no message: its descriptor will signal
                break
            try:
                on_frames(frames if raw else unwrap(frames))
            except Exception:
                logger.exception("error while handling a message")
            if not self.running or sock not in self.sockets:
                break  # stopped, or the handler closed this socket
            # Ask whether another message waits rather than let the next receive fail: raising and
            # catching zmq.Again costs several times more, once per message when they come one by
            # one (a synchronous call's reply, or its request on the worker).
            if not _get_option(sock, _EVENTS) & _POLLIN:
                # Asked last, after every receive and whatever the handlers sent on it: the descriptor
                # signals the next message. Anything else (stopped, a full burst) leaves it touched.
                self._touched.discard(sock)
                break

    def stop(self) -> None:
        """Leave ``run`` after the current round; safe from any thread and from signal handlers."""
        self.running = False
        self._write_wake()

    def close(self) -> None:
        """Close the wake-up pipe (the sockets belong to whoever added them)."""
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.spin is not None:
            self.spin.close()


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
