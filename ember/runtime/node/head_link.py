"""The node manager's connection to the head: what it sends there and what it hears back.

The node registers on it, then heartbeats: every ``HEARTBEAT_PERIOD`` seconds a bare NODE_STATS,
or at once (at most every ``STATS_PERIOD``) one with its resources, store usage, queued demand and
GPU holders when they changed. Worker logs are batched into one LOGS message per tick. The head
answers on the same connection and pushes NODE_DEAD there when it declared this node dead; those
are validated against the ``node_manager_head`` schema.
"""

import logging
from collections.abc import Callable

import msgspec

from ember.runtime import messages, protocol, transport

logger = logging.getLogger(__name__)

HEARTBEAT_PERIOD = 0.5  # seconds between heartbeats to the head (stats go sooner when they change)
STATS_PERIOD = 0.1  # seconds at least between two heartbeats that carry the node's state


class HeadLink:
    """One node's DEALER to the head. ``dirty`` says the node's state changed since it was last sent;
    ``on_node_dead(msg)`` is called when the head says this node is dead."""

    def __init__(self, head_address: str, node_id: bytes, address: str, resources: dict, host: str):
        self.node_id = node_id
        # A fixed identity: the head knows its node managers by it, across reconnections too.
        self.sock = transport.connect_dealer(head_address, identity=b"node:" + node_id)
        self.logs: dict[bytes, list] = {}  # job id -> log lines not sent yet
        self.dirty = True
        self.last_stats = 0.0
        self.last_heartbeat = 0.0
        self.on_node_dead: Callable = lambda msg: None
        self.send(
            {
                "op": protocol.REGISTER_NODE,
                "rid": b"reg",
                "node_id": node_id,
                "address": address,
                "resources": resources,
                "host": host,
            }
        )

    def attach(self, loop) -> None:
        loop.add_socket(self.sock, self.on_message)

    def send(self, header: dict) -> None:
        self.sock.send_multipart(protocol.encode(header))

    def add_logs(self, batches: dict) -> None:
        """Queue a worker's ``{job id: [LogLine]}`` for the next LOGS message (as the plain lists it is sent as)."""
        for job_id, lines in batches.items():
            self.logs.setdefault(job_id, []).extend(msgspec.to_builtins(lines))

    def tick(self, now: float, state: Callable[[], dict]) -> None:
        """Send what is due at ``now``; ``state()`` gives the NODE_STATS fields when they are sent."""
        if self.logs:
            logs, self.logs = self.logs, {}  # taken first: a batch that cannot be sent never blocks heartbeats
            self.send({"op": protocol.LOGS, "batches": logs})
        if self.dirty and now - self.last_stats > STATS_PERIOD:
            self.dirty = False
            self.last_stats = self.last_heartbeat = now
            self.send({"op": protocol.NODE_STATS, "node_id": self.node_id, **state()})
        elif now - self.last_heartbeat > HEARTBEAT_PERIOD:
            self.last_heartbeat = now
            self.send({"op": protocol.NODE_STATS, "node_id": self.node_id})

    def on_message(self, frames) -> None:
        """Replies and pushes the head sends on our connection to it (NODE_DEAD, mostly)."""
        try:
            msg = messages.decode_header("node_manager_head", frames[0])
        except messages.BadMessage as error:
            logger.warning("refused a message from the head: %s", error)
            return
        if isinstance(msg, messages.NodeDead):
            self.on_node_dead(msg)

    def close(self, announce: bool = False) -> None:
        if announce:  # tell the head we are going, so it need not wait for missed heartbeats
            self.send({"op": protocol.UNREGISTER_NODE, "rid": b"bye", "node_id": self.node_id})
            self.sock.poll(1000)
        self.sock.close(0)
