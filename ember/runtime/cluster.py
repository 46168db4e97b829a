"""A process running a head and/or a node manager: what ``ember.init()`` starts in the background.

Data flow::

    parent (the driver that started us) --stdin pipe--> EOF means the parent died: clean up, exit
    stdout: one JSON line with our addresses, then stdout/stderr go to the session's log file
    head + node manager: two services, two ROUTER sockets, one poll loop

The head and the node manager stay separate services that only talk through their sockets; they
share this process only so a local cluster starts fast and idles small.
"""

import argparse
import json
import logging
import os
import signal
import sys

from ember import dashboard as dashboard_server
from ember.runtime import transport
from ember.runtime.head.head import Head
from ember.runtime.node.node_manager import NodeManager
from ember.runtime.runtime_dir import open_private
from ember.runtime.service import EventLoop, read_eof


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="ember-cluster")
    parser.add_argument("--head", action="store_true", help="run the head service")
    parser.add_argument("--address", help="head address to join (with --no-head)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--resources", default="{}", help="JSON map of this node's resources")
    parser.add_argument("--object-store-memory", type=int, required=True)
    parser.add_argument("--session-dir", required=True)
    parser.add_argument("--env", default="{}", help="JSON map of environment variables for workers")
    parser.add_argument("--watch-stdin", action="store_true", help="exit when stdin closes")
    parser.add_argument(
        "--dashboard-port", type=int, default=None, help="with --head: 8265 by default, 0 any free port, -1 none"
    )
    args = parser.parse_args(argv)

    os.makedirs(os.path.join(args.session_dir, "logs"), mode=0o700, exist_ok=True)
    transport.sweep_stale_local_sockets()
    loop = EventLoop()
    head = None
    if args.head:
        head = Head(loop, args.host, args.port)
        head.on_stop = loop.stop
        loop.add_service(head)
        head_address = head.address
    else:
        head_address = args.address
    dashboard = None
    if head is not None:
        port = dashboard_server.configured_port(args.dashboard_port)
        head.kv[dashboard_server.EVENTS_KEY] = head.publisher_address.encode()  # the dashboard's pages subscribe there
        if port >= 0:
            dashboard = dashboard_server.start(head_address, args.host, port, args.session_dir)
        if dashboard is not None:
            head.kv[dashboard_server.URL_KEY] = dashboard[1].encode()
    node_manager = NodeManager(
        head_address,
        json.loads(args.resources),
        args.object_store_memory,
        args.session_dir,
        host=args.host,
        env=json.loads(args.env),
    )
    node_manager.attach(loop)
    node_manager.on_declared_dead = loop.stop

    print(
        json.dumps(
            {
                "head": head_address,
                "node_manager": node_manager.address,
                "node_id": node_manager.node_id.hex(),
                "store_prefix": node_manager.store_prefix,
                "pid": os.getpid(),
                "dashboard_url": dashboard[1] if dashboard else None,
            }
        ),
        flush=True,
    )
    log_path = os.path.join(args.session_dir, "logs", f"cluster-{os.getpid()}.log")
    log_fd = open_private(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    if args.watch_stdin:
        os.set_blocking(0, False)
        loop.add_fd(0, lambda fd: loop.stop() if read_eof(fd) else None)
    signal.signal(signal.SIGTERM, lambda *_: loop.stop())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the driver's terminal is the driver's
    try:
        loop.run()
    finally:
        node_manager.close(announce=head is None)
        if head is not None:
            head.close()
        if dashboard is not None:
            dashboard_server.stop(dashboard[0])


if __name__ == "__main__":
    main()
