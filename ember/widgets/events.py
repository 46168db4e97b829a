"""The event subscription every widget shares: one thread, one socket, one ``ClusterState``.

The thread subscribes to the head's event hub (``event:summary``, ``event:node``, ``event:actor``,
and ``event:task`` only while a view asks for task records: see ``want_tasks``), applies every
message to the shared ``ClusterState`` and calls the widgets' listeners at most ``rate`` times a
second (``Throttle``), after a burst has been applied, never once per event.
It sleeps in ``poll`` between messages, so an idle cluster with widgets shown stays idle, and
nothing on the cluster's side ever waits for it (the hub is a PUB socket: a slow subscriber drops
messages rather than slowing the cluster).

A feed ends when its cluster connection does (``ember.shutdown()``, ``%ember shutdown``,
``%unload_ext ember``): its stop listeners hear why, so the widgets say they show the last numbers
received rather than keep showing them as live.
"""

import logging
import os
import threading
import time

import zmq

from ember.connection import connected_client
from ember.runtime import transport
from ember.runtime.client import core_client
from ember.runtime.cluster_state import ClusterState
from ember.widgets.throttle import Throttle

logger = logging.getLogger(__name__)

TOPICS = (b"event:summary", b"event:node", b"event:actor")
TASK_TOPIC = b"event:task"  # every task's events: see EventFeed.want_tasks
# Every task's events are taken while the cluster is calm (a view made later finds the tasks that ran
# before it), and past BUSY_RATE tasks a second only for the views that ask; calm again below CALM_RATE.
BUSY_RATE = 1000
CALM_RATE = 200
RATE_WINDOW = 0.3  # seconds over which the rate is measured
RATE = 10  # widget updates per second, at most
CONNECTION_CHECK = 1.0  # seconds between looks at whether this process is still connected


class EventFeed:
    """A background subscription to the event hub at ``address`` feeding ``state`` and listeners."""

    def __init__(
        self, address: str, rate: float = RATE, state: ClusterState | None = None, busy_rate: float = BUSY_RATE
    ):
        self.address = address
        self.busy_rate = busy_rate  # tasks a second past which task events are taken only when asked for
        self.state = state or ClusterState()
        self.throttle = Throttle(1.0 / rate)
        # Held while the state changes and while listeners read it. Reentrant: the garbage collector
        # may finalize a widget on this feed's own thread while it holds the lock (ipywidgets'
        # __del__ closes it), and closing removes the widget's listeners under the same lock.
        self.lock = threading.RLock()
        self.listeners: list = []
        self.stop_listeners: list = []  # fn(why), called once when the feed ends
        self.disconnected: str | None = None  # why the feed ended
        self.client = core_client.current_client(required=False)  # the connection it reports on
        self.redraw_at: float | None = None  # a listener round due then even without a new event
        self.updates = 0  # listener rounds so far (tests check the throttle with it)
        self.cpu = 0.0  # CPU seconds this feed's thread spent applying events and updating widgets
        self.task_viewers: set = set()  # the views that need task records now (see want_tasks)
        self.taking_tasks = False  # subscribed to every task's events
        self.busy = False  # the cluster runs more than BUSY_RATE tasks a second
        self._rate_mark = (time.monotonic(), 0)  # (when, tasks counted then)
        self._took_tasks = threading.Condition()  # notified when taking_tasks changes
        self._stop = False
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="ember-widget-events", daemon=True)

    def start(self) -> "EventFeed":
        try:
            if self.client is not None and self.client.publisher_address == self.address:
                self.state.load_snapshot(_nodes_snapshot())
                # The tasks that ended before we looked are not this kernel's to show: the head's
                # summary now is the base its later summaries are counted from.
                self.state.load_summary(_summary_snapshot())
        except Exception:
            logger.debug("no node or task snapshot", exc_info=True)
        self._thread.start()
        return self

    def refresh(self) -> None:
        """Bring the counts up to date with this process's own tasks now (``%ember status`` reads them
        right after a cell's tasks ended): their events are sent to the head at once instead of at
        the end of the owner's batching period, then the head's summary is asked for and loaded. A
        summary published meanwhile cannot roll it back (summaries carry the head's version)."""
        client = self.client
        if client is None or client.publisher_address != self.address or self.disconnected:
            return
        client.flush_task_events()
        summary = _summary_snapshot()
        with self.lock:
            self.state.load_summary(summary)
            self.state.version += 1
            self.throttle.note()
        self._wake()

    def add_listener(self, listener) -> None:
        """Call ``listener(state)`` on the feed's thread after changes (at most ``rate`` times a second)."""
        with self.lock:
            self.listeners.append(listener)
        self.poke()

    def remove_listener(self, listener) -> None:
        with self.lock:
            if listener in self.listeners:
                self.listeners.remove(listener)
            if listener in self.stop_listeners:
                self.stop_listeners.remove(listener)

    def want_tasks(self, viewer, wanted: bool, wait: float = 0.0) -> None:
        """Whether ``viewer`` needs task records (a progress bar follows its tasks; a task graph draws
        them one by one below its threshold). The feed takes every task's events only while some view
        does, or while the cluster is calm: on a busy cluster decoding them costs the kernel's own
        throughput, and the other views need only the head's summaries. ``wait``: seconds at most to
        wait until the feed takes them (not from a listener). A listener may call it with no wait: it
        does not take the lock."""
        had = bool(self.task_viewers)
        if wanted:
            self.task_viewers.add(viewer)
        else:
            self.task_viewers.discard(viewer)
        if had != bool(self.task_viewers):
            self._wake()  # the feed's thread changes its subscription (the socket is only its to touch)
        if wanted and wait > 0 and threading.current_thread() is not self._thread and self._thread.is_alive():
            with self._took_tasks:
                self._took_tasks.wait_for(lambda: self.taking_tasks or self._stop, wait)

    def poke_later(self, delay: float) -> None:
        """Ask for a listener round in ``delay`` seconds even if no event comes (a hidden view that
        skipped a change redraws then)."""
        at = time.monotonic() + delay
        if self.redraw_at is None or at < self.redraw_at:
            self.redraw_at = at
            self._wake()

    def add_stop_listener(self, listener) -> None:
        """Call ``listener(why)`` once when the feed ends (at once if it already has)."""
        with self.lock:
            why = self.disconnected
            if why is None:
                self.stop_listeners.append(listener)
        if why is not None:
            listener(why)

    def _ended(self, why: str) -> None:
        with self.lock:
            if self.disconnected is not None:
                return
            self.disconnected = why
            listeners, self.stop_listeners = self.stop_listeners, []
        for listener in listeners:
            try:
                listener(why)
            except Exception:
                logger.exception("a widget failed to show that it is disconnected")

    def poke(self) -> None:
        """Ask for a listener round soon even without a new event (a new widget draws at once)."""
        with self.lock:
            self.throttle.note()
        self._wake()

    def stop(self, why: str = "Ember was unloaded from this kernel") -> None:
        self._stop = True
        self._wake()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)
        self._ended(why)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # stopped

    def _run(self) -> None:
        socket = transport.connect_subscriber(self.address, (*TOPICS, TASK_TOPIC))  # calm until measured
        with self._took_tasks:
            self.taking_tasks = True
            self._took_tasks.notify_all()
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            while not self._stop:
                due = self.throttle.due()
                wait = CONNECTION_CHECK if due is None else min(due, CONNECTION_CHECK)
                if self.redraw_at is not None:
                    wait = max(0.0, min(wait, self.redraw_at - time.monotonic()))
                ready = dict(poller.poll(max(1, int(wait * 1000))))
                if self.redraw_at is not None and time.monotonic() >= self.redraw_at:
                    self.redraw_at = None
                    with self.lock:
                        self.throttle.note()
                if core_client.current_client(required=False) is not self.client:
                    self._ended("the cluster connection was shut down")
                    return
                started = time.thread_time()
                if self._wake_r in ready:
                    os.read(self._wake_r, 4096)
                if socket in ready:
                    self._drain(socket)
                self._watch_rate()
                if self.taking_tasks != (bool(self.task_viewers) or not self.busy):
                    self._take_tasks(socket, not self.taking_tasks)
                if self.throttle.take():
                    self._notify()
                self.cpu += time.thread_time() - started
        except Exception:
            logger.exception("the widgets' event feed stopped")
        finally:
            socket.close(0)

    def _watch_rate(self) -> None:
        now = time.monotonic()
        when, counted = self._rate_mark
        if now - when < RATE_WINDOW:
            return
        total = sum(self.state.counts.values())
        rate = (total - counted) / (now - when)
        self._rate_mark = (now, total)
        self.busy = rate > (self.busy_rate * CALM_RATE / BUSY_RATE if self.busy else self.busy_rate)

    def _take_tasks(self, socket, take: bool) -> None:
        socket.setsockopt(zmq.SUBSCRIBE if take else zmq.UNSUBSCRIBE, TASK_TOPIC)
        with self._took_tasks:
            self.taking_tasks = take
            self._took_tasks.notify_all()
        if not take:
            with self.lock:
                # Records stop being updated now: dropped rather than left in a stale state.
                self.state.forget_records()
            self.throttle.note()

    def _drain(self, socket) -> None:
        with self.lock:
            transport.drain_subscriber(socket, self.state.apply)
            self.throttle.note()

    def _notify(self) -> None:
        with self.lock:
            listeners = list(self.listeners)
            self.updates += 1
            for listener in listeners:
                try:
                    listener(self.state)
                except Exception:
                    logger.exception("a widget failed to update")


def _nodes_snapshot() -> list:
    import ember

    return ember.nodes()


def _summary_snapshot() -> dict:
    from ember.runtime import protocol

    reply, _ = core_client.current_client().request("head", {"op": protocol.STATE_QUERY, "kind": "summary"})
    return reply.summary


_feed: EventFeed | None = None
_feed_lock = threading.Lock()


def feed() -> EventFeed:
    """The process's shared feed for the connected cluster (started on first use)."""
    global _feed
    client = connected_client()  # a widget is public API: it starts Ember on first use, as Ray's calls do
    with _feed_lock:
        if _feed is not None and (_feed.address != client.publisher_address or _feed.disconnected):
            _feed.stop("this kernel connected to another cluster")
            _feed = None
        if _feed is None:
            _feed = EventFeed(client.publisher_address).start()
        return _feed


def stop_feed() -> None:
    """Stop the shared feed (``%unload_ext ember`` and ``%ember shutdown`` call this)."""
    global _feed
    with _feed_lock:
        if _feed is not None:
            _feed.stop()
            _feed = None
