"""Several node managers against one head on this machine, as real processes: what the
multi-node tests use to stand in for a cluster of machines."""

import os
import secrets
import signal
import subprocess
import tempfile

import conftest

from ember.runtime import launcher, runtime_dir

STORE = 512 * 2**20


class LocalCluster:
    """A head (with its own node manager) plus extra node managers joined with ``--address``.

    Every process reads a pipe from the test process on stdin and exits when it closes, so a
    test that fails midway leaves nothing behind.
    """

    def __init__(self, head_resources: dict, node_timeout_s: float = 2.0, shared: bool = False, token=None):
        self.shared = shared  # kept up across tests by a module fixture: not a leak between them
        self.session_dir = tempfile.mkdtemp(prefix="ember-multinode-", dir=runtime_dir.runtime_dir())
        # Every cluster has a secret: drivers of this one get it through driver_env().
        self.token = token or secrets.token_hex(16)
        self.env = dict(os.environ, EMBER_NODE_TIMEOUT_S=str(node_timeout_s), EMBER_CLUSTER_TOKEN=self.token)
        self.processes: list = []
        self.nodes: list = []  # the JSON line each process printed: head, node_manager, node_id, pid
        head = self._start(None, head_resources)
        self.address = head["head"]

    def add_node(self, resources: dict) -> dict:
        """Start a node manager that joins the head; returns its info (``node_id`` is hex)."""
        return self._start(self.address, resources)

    def _start(self, head_address, resources: dict) -> dict:
        resources = {"CPU": 1.0, "object_store_memory": float(STORE), **resources}
        info, process = launcher.start_cluster_process(
            resources,
            self.session_dir,
            head=head_address is None,
            address=head_address,
            watch_stdin=True,
            process_env=self.env,
        )
        if self.shared:
            conftest.SHARED_ROOTS.add(process.pid)
            conftest.SHARED_PREFIXES.add(info["store_prefix"])
        self.processes.append(process)
        self.nodes.append(info)
        return info

    def stop_node(self, info: dict) -> None:
        """Stop a node manager cleanly (its stdin closes, as when its parent goes)."""
        self.processes[self.nodes.index(info)].stdin.close()

    def node_table(self) -> list:
        """The head's node table (GET_NODES), asked from this process without connecting a driver."""
        from ember.runtime import protocol, transport

        sock = transport.connect_dealer(self.address, token=self.token)
        try:
            sock.send_multipart(protocol.encode({"op": protocol.GET_NODES, "rid": b"t"}))
            if not sock.poll(10_000):
                raise RuntimeError("the head did not answer")
            return protocol.decode(sock.recv_multipart())[0]["nodes"]
        finally:
            sock.close(0)

    def kill_node(self, info: dict) -> None:
        """SIGKILL a node manager (its workers follow it: they watch its pipe)."""
        os.kill(info["pid"], signal.SIGKILL)

    def stop(self) -> None:
        for process in reversed(self.processes):
            try:
                process.stdin.close()
            except OSError:
                pass
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for process, info in zip(self.processes, self.nodes):
            # A node manager killed with SIGKILL could not remove its files: as `ember stop` does.
            launcher.remove_store_files(info["store_prefix"])
            conftest.SHARED_ROOTS.discard(process.pid)
            conftest.SHARED_PREFIXES.discard(info["store_prefix"])
