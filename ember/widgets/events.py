"""The event subscription every widget shares: one thread, one socket, one ``ClusterState``.

The thread subscribes to the head's event hub (``event:task``, ``event:node``, ``event:actor``),
applies every message to the shared ``ClusterState`` and calls the widgets' listeners at most
``rate`` times a second (``Throttle``), after a burst has been applied, never once per event.
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

import msgspec
import zmq

from ember.connection import connected_client
from ember.runtime import transport
from ember.runtime.client import core_client
from ember.widgets.state import ClusterState
from ember.widgets.throttle import Throttle

logger = logging.getLogger(__name__)

# The kernel decodes every task's event under the driver's GIL: msgspec's decoder takes a quarter
# less time than msgpack's for these batches of small maps.
_decode = msgspec.msgpack.Decoder().decode

TOPICS = (b"event:task", b"event:node", b"event:actor")
RATE = 10  # widget updates per second, at most
CONNECTION_CHECK = 1.0  # seconds between looks at whether this process is still connected


class EventFeed:
    """A background subscription to the event hub at ``address`` feeding ``state`` and listeners."""

    def __init__(self, address: str, rate: float = RATE, state: ClusterState | None = None):
        self.address = address
        self.state = state or ClusterState()
        self.throttle = Throttle(1.0 / rate)
        self.lock = threading.Lock()  # held while the state changes and while listeners read it
        self.listeners: list = []
        self.stop_listeners: list = []  # fn(why), called once when the feed ends
        self.disconnected: str | None = None  # why the feed ended
        self.client = core_client.current_client(required=False)  # the connection it reports on
        self.redraw_at: float | None = None  # a listener round due then even without a new event
        self.updates = 0  # listener rounds so far (tests check the throttle with it)
        self.busy = 0.0  # CPU seconds this feed's thread spent applying events and updating widgets
        self._stop = False
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="ember-widget-events", daemon=True)

    def start(self) -> "EventFeed":
        try:
            nodes = core_client.current_client() and _nodes_snapshot()
            self.state.load_snapshot(nodes or [])
        except Exception:
            logger.debug("no node snapshot", exc_info=True)
        self._thread.start()
        return self

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
        socket = transport.connect_subscriber(self.address, TOPICS)
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
                if self.throttle.take():
                    self._notify()
                self.busy += time.thread_time() - started
        except Exception:
            logger.exception("the widgets' event feed stopped")
        finally:
            socket.close(0)

    def _drain(self, socket) -> None:
        with self.lock:
            while True:
                try:
                    topic, body = socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    self.state.apply(topic, _decode(body))
                except Exception:
                    logger.debug("malformed event dropped", exc_info=True)
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
