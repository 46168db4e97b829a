"""The Logs page's files of every node: the dashboard asks each alive node's manager, as
``ember.util.state.list_logs``/``get_log`` do (ops ``log_files`` and ``log_read``, see
ember/runtime/node/log_files.py), over a connection of its own that holds the cluster's secret::

    GET /api/logs?node=ID             -> head: GET_NODES (the node's address) -> node manager: log_files
    GET /api/logs/NAME?node=ID&tail=N -> node manager: log_read (at most 1 MiB, the node's cap)

A node lists only its own files (its process's log and its workers', exited ones included), so two
node managers sharing a machine's session directory show their own. The head's machine's session
directory (its dashboard's and runtime env logs among them) stays listed by pages.Pages.logs.
"""

import concurrent.futures
import threading

from ember.runtime import protocol
from ember.runtime.messages import LOG_READ_MAX

NODE_TIMEOUT = 3.0  # seconds a page waits for one node manager (a page lists every alive node)
MAX_ASKING = 16  # node managers asked at once


class NoSuchNode(KeyError):
    """No alive node of that id."""


class NodeLogs:
    """One connection per node manager, opened on first use and closed when its node is gone."""

    def __init__(self, head):
        self.head = head  # a server.HeadClient
        self.lock = threading.Lock()
        self.clients: dict = {}  # node manager address -> HeadClient

    def nodes(self) -> list:
        """The alive nodes: ``{"node_id": hex, "address": ...}``, the head's node first."""
        rows = self.head.request({"op": protocol.GET_NODES})[0].get("nodes") or []
        alive = [{"node_id": bytes(n["node_id"]).hex(), "address": n["address"]} for n in rows if n.get("alive")]
        self._close_others({n["address"] for n in alive})
        return alive

    def _node(self, node_id: str) -> dict:
        for node in self.nodes():
            if node["node_id"] == node_id:
                return node
        raise NoSuchNode(node_id)

    def _client(self, address: str):
        from ember.dashboard.server import HeadClient

        with self.lock:
            client = self.clients.get(address)
            if client is None:
                client = self.clients[address] = HeadClient(address, name="The node manager")
            return client

    def _close_others(self, addresses: set) -> None:
        with self.lock:
            for address in [a for a in self.clients if a not in addresses]:
                self.clients.pop(address).close()

    def files(self, node_id: str) -> list:
        """The node's log files (name, kind, pid, size, alive); NoSuchNode for no alive node of that id."""
        return self._files(self._node(node_id))

    def _files(self, node: dict) -> list:
        reply, _ = self._client(node["address"]).request({"op": protocol.LOG_FILES}, timeout=NODE_TIMEOUT)
        return reply.get("files") or []

    def every_node(self) -> list:
        """Each alive node with its files, or the error that asking it gave (a node busy or just gone);
        the nodes are asked at once, so a slow one costs the page its own timeout, not the sum."""
        nodes = self.nodes()
        if len(nodes) <= 1:
            return [self._node_row(node) for node in nodes]
        with concurrent.futures.ThreadPoolExecutor(min(len(nodes), MAX_ASKING)) as pool:
            return list(pool.map(self._node_row, nodes))

    def _node_row(self, node: dict) -> dict:
        try:
            return {**node, "files": self._files(node)}
        except (ConnectionError, RuntimeError) as error:
            return {**node, "files": [], "error": str(error)}

    def text(self, node_id: str, name: str, tail: int) -> str:
        """The last ``tail`` bytes (at most LOG_READ_MAX) of the node's log file ``name``. KeyError:
        no such node, or no such file of that node (RuntimeError from the node manager's refusal)."""
        node = self._node(node_id)
        header = {"op": protocol.LOG_READ, "name": name, "tail": max(0, min(tail, LOG_READ_MAX))}
        try:
            _, frames = self._client(node["address"]).request(header, timeout=NODE_TIMEOUT)
        except RuntimeError as error:  # refused: not one of its files (or a name no file can have)
            raise KeyError(str(error)) from None
        return bytes(frames[0]).decode(errors="replace") if frames else ""

    def close(self) -> None:
        self._close_others(set())
