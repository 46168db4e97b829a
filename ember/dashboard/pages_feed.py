"""The dashboard process's view of the cluster: one subscription to the head's event hub.

    head --event:summary / event:node / event:actor--> PagesFeed thread --> ClusterState (the
        widgets' class, aggregates only) + a short history of the task totals
    page requests --> read that state under the lock

The head publishes its task aggregates ten times a second at most, whatever the task rate, so an
open page costs the cluster nothing per task. What needs single tasks (the task stream, the workers
table, the recent and failed tasks) is asked of the head once a second, as its ``activity`` answer
(see pages.py): this process never decodes every task's events. The hub is a PUB socket, so a slow
dashboard drops events rather than slowing the cluster.
"""

import logging
import os
import threading
import time
from collections import deque

import zmq

from ember.runtime import transport
from ember.runtime.cluster_state import ACTOR_FIELDS, STATES, ClusterState

logger = logging.getLogger(__name__)

TOPICS = (b"event:summary", b"event:node", b"event:actor")
RATE_WINDOW_S = 3.0  # tasks/s is measured over this many seconds of summaries


def _hex(value):
    return value.hex() if isinstance(value, bytes) else value


class TaskRate:
    """Tasks ended per second, from the totals of successive summaries. Plain: no clock of its own."""

    def __init__(self, window: float = RATE_WINDOW_S):
        if window <= 0:
            raise ValueError(f"The rate window must be positive, got {window!r}.")
        self.window = window
        self.marks: deque = deque()  # (time, tasks ended so far)

    def note(self, now: float, ended: int) -> None:
        self.marks.append((now, ended))
        while len(self.marks) > 2 and now - self.marks[1][0] >= self.window:
            self.marks.popleft()

    def rate(self, now: float) -> float:
        """Per second over the window up to ``now``; an idle cluster's summaries stop, so a last mark
        older than the window means nothing ended since."""
        if len(self.marks) < 2 or now - self.marks[-1][0] > self.window:
            return 0.0
        (first, ended_first), (_, ended_last) = self.marks[0], self.marks[-1]
        return (ended_last - ended_first) / max(now - first, 1e-3)


class PagesFeed:
    """A background subscription at ``events_address`` feeding ``state``; ``head`` (a HeadClient)
    gives the nodes and the task summary to start from."""

    def __init__(self, events_address: str, head=None):
        self.address = events_address
        self.state = ClusterState(since_start=True)  # the cluster's totals
        self.lock = threading.Lock()
        self.rate = TaskRate()
        self.started_at = time.time()
        self._head = head
        self._stop = False
        self._socket = None
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="ember-dashboard-events", daemon=True)

    def start(self) -> "PagesFeed":
        # Subscribed before the snapshot is read, so nothing falls between the two (a change seen in
        # both is applied twice, harmlessly: events carry whole values). The socket passes to the
        # thread here, before it starts, and is only the thread's from then on.
        self._socket = transport.connect_subscriber(self.address, TOPICS)
        if self._head is not None:
            try:
                self._seed()
            except Exception:
                logger.warning("no starting snapshot of the cluster", exc_info=True)
        self._thread.start()
        return self

    def _seed(self) -> None:
        from ember.runtime import protocol

        nodes = self._head.request({"op": protocol.GET_NODES})[0].get("nodes") or []
        summary = self._head.request({"op": protocol.STATE_QUERY, "kind": "summary"})[0].get("summary")
        # Actors made before we subscribed (the dashboard starts beside the head and imports its web
        # stack meanwhile) are only in the head's table.
        actors = self._head.request({"op": protocol.STATE_QUERY, "kind": "actors"})[0].get("rows") or []
        with self.lock:
            for node in nodes:
                self._apply(b"event:node", {**node, "total": node.get("resources")})
            for row in actors:
                self.state.actors.setdefault(row["actor_id"].hex(), {k: _hex(row.get(k)) for k in ACTOR_FIELDS})
            if summary:
                self._apply(b"event:summary", summary)

    def stop(self) -> None:
        self._stop = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(5)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _apply(self, topic: bytes, body) -> None:
        self.state.apply(topic, body)
        if topic == b"event:node" and body.get("total") is not None:
            # A node's report names its resources "total"; the widgets' views read "resources".
            self.state.nodes[body["node_id"].hex()]["resources"] = body["total"]
        if topic == b"event:summary":
            counts = body.get("counts") or {}
            self.rate.note(time.monotonic(), counts.get("finished", 0) + counts.get("failed", 0))

    def _run(self) -> None:
        socket = self._socket
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            while not self._stop:
                ready = dict(poller.poll(1000))
                if self._wake_r in ready:
                    os.read(self._wake_r, 4096)
                if socket in ready:
                    with self.lock:
                        transport.drain_subscriber(socket, self._apply)
        except Exception:
            logger.exception("the dashboard's event feed stopped")
        finally:
            socket.close(0)

    # --- what the pages read (call with the lock held) ---------------------------------------------------
    def totals(self) -> dict:
        state = self.state
        return {
            "counts": {s: state.counts.get(s, 0) for s in STATES},
            "running": state.running_now(),
            "tasks_per_s": round(self.rate.rate(time.monotonic()), 2),
        }
