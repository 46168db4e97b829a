"""The autoscaler's monitor process: starts and stops local node managers to meet demand.

Data flow::

    head --get_nodes (nodes, demand, pending_bundles), kv_get autoscaler:request--> monitor (every 0.5 s)
    monitor: AutoscalerPolicy.update(...) -> launch / terminate
    monitor --spawn, stdin pipe--> python -m ember.runtime.cluster --address HEAD (one per worker node)
    monitor --SIGTERM--> a node it launched that stayed idle for idle_timeout_s
    monitor --kv_put autoscaler:status (launched nodes, infeasible demand), when it changes--> head
    stdout: one JSON line ({"pid": ...}) when it is running, then stdout/stderr go to its log file

Each launched node watches the monitor through its stdin, so a monitor that dies (even by SIGKILL)
takes its nodes with it; the monitor exits, stopping its nodes, when the head stops answering.
"""

import argparse
import json
import logging
import os
import signal
import sys
import time

import msgpack
import zmq

from ember.autoscaler import REQUEST_KEY, STATUS_KEY, decode_request
from ember.autoscaler.policy import AutoscalerPolicy
from ember.runtime import launcher, protocol, transport

logger = logging.getLogger("ember.autoscaler")

POLL_INTERVAL_S = 0.5
# The head is gone when it has not answered for this long (it answers in milliseconds when alive).
HEAD_TIMEOUT_S = 5.0


class HeadClient:
    """One DEALER to the head with request ids, so a late reply to an old poll is never mistaken
    for the answer to a new one."""

    def __init__(self, address: str):
        self.sock = transport.connect_dealer(address)
        self.next_rid = 0

    def request(self, header: dict, timeout: float, frames=()) -> tuple[dict, list] | None:
        self.next_rid += 1
        rid = self.next_rid.to_bytes(8, "little")
        self.sock.send_multipart(protocol.encode({**header, "rid": rid}, frames))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.sock.poll(int(remaining * 1000) + 1):
                return None
            reply, frames = protocol.decode(self.sock.recv_multipart())
            if reply.get("rid") == rid:
                return reply, frames

    def close(self) -> None:
        self.sock.close(0)


class Monitor:
    """Carries out the policy's actions with real processes."""

    def __init__(self, args):
        self.args = args
        self.head = HeadClient(args.address)
        shape = json.loads(args.worker_resources)
        self.node_resources = launcher.node_resources(
            num_cpus=shape.pop("CPU", 0),
            num_gpus=shape.pop("GPU", 0),
            resources=shape,
            object_store_memory=args.object_store_memory,
        )
        self.policy = AutoscalerPolicy(self.node_resources, args.max_workers, args.idle_timeout_s)
        self.processes: dict[str, object] = {}  # node id (hex) -> Popen
        self.launch_count = 0
        self.stopping = False
        self.last_infeasible: list = []
        self.last_status = None

    def poll_head(self) -> tuple[list, list, list] | None:
        reply = self.head.request({"op": protocol.GET_NODES}, POLL_INTERVAL_S * 4)
        if reply is None:
            return None
        header = reply[0]
        nodes = []
        for node in header.get("nodes", []):
            node = dict(node)
            node["node_id"] = node["node_id"].hex() if isinstance(node["node_id"], bytes) else str(node["node_id"])
            nodes.append(node)
        requested = []
        kv = self.head.request({"op": protocol.KV_GET, "key": REQUEST_KEY}, POLL_INTERVAL_S * 4)
        if kv is not None and kv[0].get("found") and kv[1]:
            requested = decode_request(bytes(kv[1][0]))
        return nodes, requested, header.get("pending_bundles") or []

    def launch(self) -> None:
        self.launch_count += 1
        session_dir = os.path.join(self.args.session_dir, "autoscaler", f"node-{self.launch_count}")
        os.makedirs(os.path.join(session_dir, "logs"), exist_ok=True)
        try:
            info, process = launcher.start_cluster_process(
                self.node_resources,
                session_dir,
                address=self.args.address,
                host=self.args.node_host,
                watch_stdin=True,
            )
        except RuntimeError as error:
            logger.error("could not launch a worker node: %s", error)
            return
        self.processes[info["node_id"]] = process
        self.policy.node_launched(info["node_id"], time.monotonic())
        logger.info("launched worker node %s (pid %d)", info["node_id"][:12], process.pid)

    def stop_node(self, node_id: str) -> None:
        process = self.processes.pop(node_id, None)
        self.policy.node_gone(node_id)
        if process is None:
            return
        logger.info("terminating worker node %s (pid %d)", node_id[:12], process.pid)
        launcher.terminate(process.pid)
        process.wait()
        try:
            process.stdin.close()
        except OSError:
            pass
        launcher.remove_store_files(process.store_prefix)

    def reap(self) -> None:
        """Notice launched nodes whose process exited on its own."""
        for node_id, process in list(self.processes.items()):
            if process.poll() is not None:
                logger.warning("worker node %s exited with %s", node_id[:12], process.returncode)
                self.stop_node(node_id)

    def run(self) -> None:
        last_answer = time.monotonic()
        while not self.stopping:
            started = time.monotonic()
            self.reap()
            view = self.poll_head()
            now = time.monotonic()
            if view is None:
                if now - last_answer > HEAD_TIMEOUT_S:
                    logger.info("the head at %s stopped answering: stopping", self.args.address)
                    return
                continue
            last_answer = now
            nodes, requested, pending_bundles = view
            for action, arg in self.policy.update(now, nodes, requested, pending_bundles):
                if action == "launch":
                    self.launch()
                elif action == "terminate":
                    self.stop_node(arg)
            if self.policy.infeasible != self.last_infeasible:
                self.last_infeasible = list(self.policy.infeasible)
                if self.last_infeasible:
                    logger.warning("infeasible demand (fits no node and no worker node): %s", self.last_infeasible)
            self.publish_status()
            time.sleep(max(0.0, POLL_INTERVAL_S - (time.monotonic() - started)))

    def publish_status(self) -> None:
        status = {
            "max_workers": self.policy.max_workers,
            "idle_timeout_s": self.policy.idle_timeout_s,
            "worker_shape": self.policy.worker_shape,
            "launched": sorted(
                [n.node_id, "running" if n.joined else "launching"] for n in self.policy.launched.values()
            ),
            "infeasible": self.policy.infeasible,
        }
        if status != self.last_status:
            payload = msgpack.packb(status, use_bin_type=True)
            header = {"op": protocol.KV_PUT, "key": STATUS_KEY, "overwrite": True}
            if self.head.request(header, POLL_INTERVAL_S * 4, [payload]) is not None:
                self.last_status = status

    def close(self) -> None:
        for node_id in list(self.processes):
            self.stop_node(node_id)
        self.head.close()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="ember-autoscaler")
    parser.add_argument("--address", required=True, help="the head's address, host:port")
    parser.add_argument("--max-workers", type=int, required=True, help="most worker nodes to run at once")
    parser.add_argument("--idle-timeout-s", type=float, default=60.0, help="stop a node idle this long")
    parser.add_argument("--worker-resources", default='{"CPU": 1}', help="JSON resources of one worker node")
    parser.add_argument("--object-store-memory", type=int, default=None, help="each worker node's store size")
    parser.add_argument("--node-host", default=None, help="the address worker nodes bind (default: loopback)")
    parser.add_argument("--session-dir", required=True)
    args = parser.parse_args(argv)
    if args.max_workers < 0:
        parser.error("--max-workers must be non-negative")
    if args.idle_timeout_s < 0:
        parser.error("--idle-timeout-s must be non-negative")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    os.makedirs(os.path.join(args.session_dir, "logs"), exist_ok=True)
    monitor = Monitor(args)
    print(json.dumps({"pid": os.getpid(), "autoscaler": True}), flush=True)
    log_fd = os.open(
        os.path.join(args.session_dir, "logs", "autoscaler.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
    )
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def stop(*_):
        monitor.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in `ember start --block`'s terminal is handled there
    try:
        monitor.run()
    except zmq.ZMQError:
        logger.exception("lost the head")
    finally:
        monitor.close()


if __name__ == "__main__":
    main()
