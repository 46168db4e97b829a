"""The ``ember`` command: ``ember start``, ``ember stop``, ``ember status`` (Ray's ``ray start/stop/status``).

Data flow::

    ember start --head ----spawn, detached----> python -m ember.runtime.cluster --head   (head + node manager)
                       ----spawn, detached----> python -m ember.autoscaler.monitor      (with --autoscale)
    ember start --address HOST:PORT --spawn--> python -m ember.runtime.cluster --address HOST:PORT
        each prints one JSON line; `ember start` records it in <runtime dir>/started/<pid>
        (and a head's address and secret in <runtime dir>/clusters/<pid>, for init(address="auto"));
        the runtime dir is the user's 0700 directory (ember/runtime/runtime_dir.py)
    ember stop   --SIGTERM (then SIGKILL)--> exactly the recorded processes; removes their /dev/shm files
    ember status --get_nodes--> head

Without ``--block`` the processes run in their own session and outlive the terminal; with it,
``ember start`` stays in the foreground and Ctrl-C stops what it started.
"""

import argparse
import ipaddress
import json
import os
import secrets
import signal
import socket
import sys
import time

from ember.runtime import launcher, runtime_dir

DEFAULT_PORT = 6379  # Ray's default head port
TOKEN_VARIABLE = "EMBER_CLUSTER_TOKEN"  # as ember.runtime.transport reads it


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_autoscale(text: str) -> dict:
    """``max_workers=N,idle_timeout_s=S[,worker_cpus=C,worker_gpus=G]`` -> a dict of numbers."""
    allowed = {"max_workers": int, "idle_timeout_s": float, "worker_cpus": float, "worker_gpus": float}
    result = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in allowed:
            raise argparse.ArgumentTypeError(
                f"--autoscale takes name=value pairs among {', '.join(allowed)}; got {item!r}."
            )
        try:
            result[name] = allowed[name](value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--autoscale {name} must be a number, got {value!r}.")
        if result[name] < 0:
            raise argparse.ArgumentTypeError(f"--autoscale {name} must be non-negative, got {value!r}.")
    if "max_workers" not in result:
        raise argparse.ArgumentTypeError("--autoscale needs max_workers=N.")
    return result


def _parse_resources(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--resources must be a JSON object, e.g. '{{\"node_a\": 1}}': {error}")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"--resources must be a JSON object, got {text!r}.")
    return value


def _local_ip_towards(address: str) -> str:
    """The address of this machine's interface that routes to ``address`` (no packet is sent)."""
    host = address.rsplit(":", 1)[0]
    if host in ("127.0.0.1", "localhost"):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host, 9))
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def _resources_from_args(args) -> dict:
    from ember.runtime.accelerators import gpu_resources

    extra = dict(args.resources or {})
    num_gpus = args.num_gpus
    if num_gpus is None:
        # As in Ray: without --num-gpus the node declares the GPUs it can see, and their type.
        detected = gpu_resources()
        num_gpus = detected.pop("GPU", 0)
        for name, amount in detected.items():
            extra.setdefault(name, amount)
    return launcher.node_resources(args.num_cpus, num_gpus, extra, args.object_store_memory)


# --- ember start ------------------------------------------------------------------------------------
def _check_join(address: str, host: str) -> str | None:
    """Why a node cannot join the head at ``address`` (None: it can). Takes the secret of this user's
    cluster at that address on this machine when the environment has none; then tries a handshake, so a
    missing or wrong secret is told now rather than as a node that never starts."""
    from ember.runtime import transport

    if not os.environ.get(TOKEN_VARIABLE):
        if not _is_loopback(host):
            return (
                f"joining over a network needs the cluster's secret: set {TOKEN_VARIABLE} to the value "
                "`ember start --head` printed."
            )
        token = runtime_dir.secret_for(address)
        if token is None:
            return runtime_dir.missing_secret_message(address)
        os.environ[TOKEN_VARIABLE] = token
    try:
        transport.connect_checked(address).close(0)
    except transport.AuthenticationError:
        return runtime_dir.missing_secret_message(address)
    return None


def cmd_start(args) -> int:
    if bool(args.head) == bool(args.address):
        print("ember start: give either --head or --address HOST:PORT.", file=sys.stderr)
        return 2
    if args.autoscale and not args.head:
        print("ember start: --autoscale runs next to the head; use it with --head.", file=sys.stderr)
        return 2
    address = args.address[len("ember://") :] if args.address and args.address.startswith("ember://") else args.address
    try:
        resources = _resources_from_args(args)
    except ValueError as error:
        print(f"ember start: {error}", file=sys.stderr)
        return 2
    host = args.node_ip_address or (_local_ip_towards(address) if address else "127.0.0.1")
    token_made = False
    if args.head and not os.environ.get(TOKEN_VARIABLE):
        # Unpickling is code execution: every cluster, on loopback too, only talks to holders of its secret.
        os.environ[TOKEN_VARIABLE] = secrets.token_hex(32)
        token_made = True
    elif not args.head:
        problem = _check_join(address, host)
        if problem:
            print(f"ember start: {problem}", file=sys.stderr)
            return 2
    session_dir = launcher.new_session_dir()
    detach = not args.block
    try:
        info, process = launcher.start_cluster_process(
            resources,
            session_dir,
            head=bool(args.head),
            address=address,
            host=host,
            port=args.port if args.head else 0,
            watch_stdin=args.block,
            detach=detach,
            dashboard_port=args.dashboard_port if args.head else None,
        )
    except RuntimeError as error:
        print(f"ember start: {error}", file=sys.stderr)
        return 1
    started = [process]
    kind = "head" if args.head else "node"
    launcher.record_started(
        process.pid,
        kind,
        head=info["head"],
        node_manager=info["node_manager"],
        node_id=info["node_id"],
        store_prefix=info["store_prefix"],
        session_dir=session_dir,
    )
    if args.head:
        runtime_dir.write_cluster_file(process.pid, info["head"], os.environ[TOKEN_VARIABLE])
        if args.autoscale:
            try:
                started.append(
                    _start_autoscaler(args.autoscale, info["head"], resources, host, session_dir, args.block)
                )
            except RuntimeError as error:
                print(f"ember start: the autoscaler failed to start: {error}", file=sys.stderr)
                _stop_entries([e for e in launcher.list_started() if e["pid"] == process.pid])
                return 1
    _print_started(info, kind, resources, session_dir, bool(args.autoscale))
    if token_made:
        where = "" if _is_loopback(host) else " (on other machines)"
        print(f"Only holders of the cluster's secret get in: every node and driver{where} needs it in the environment,")
        print(f"while this user's drivers on this machine find it in {runtime_dir.cluster_dir()}/:")
        print(f"    export {TOKEN_VARIABLE}={os.environ[TOKEN_VARIABLE]}")
    if args.block:
        return _block(started)
    return 0


def _start_autoscaler(options: dict, head: str, head_resources: dict, host: str, session_dir: str, block: bool):
    worker = {"CPU": options.get("worker_cpus", 1.0)}
    if options.get("worker_gpus"):
        worker["GPU"] = options["worker_gpus"]
    argv = [
        sys.executable,
        "-m",
        "ember.autoscaler.monitor",
        "--address",
        head,
        "--max-workers",
        str(options["max_workers"]),
        "--idle-timeout-s",
        str(options.get("idle_timeout_s", 60.0)),
        "--worker-resources",
        json.dumps(worker),
        "--object-store-memory",
        str(int(head_resources["object_store_memory"])),
        "--node-host",
        host,
        "--session-dir",
        session_dir,
    ]
    _, process = launcher.start_process(
        argv, os.path.join(session_dir, "logs", "autoscaler-startup.log"), detach=not block
    )
    launcher.record_started(process.pid, "autoscaler", head=head, session_dir=session_dir)
    return process


def _print_started(info: dict, kind: str, resources: dict, session_dir: str, autoscale: bool) -> None:
    shown = {k: v for k, v in resources.items() if k not in ("memory", "object_store_memory")}
    store_gib = resources["object_store_memory"] / 2**30
    what = "Ember head and node manager" if kind == "head" else "Ember node manager"
    print(f"Started the {what} (pid {info['pid']}, node {info['node_id'][:12]}).")
    print(f"  resources: {json.dumps(shown)}, object store {store_gib:.2f} GiB")
    if autoscale:
        print("  autoscaler: running next to the head")
    print(f"  logs: {session_dir}/logs")
    if info.get("dashboard_url"):
        url = info["dashboard_url"]
        print(f"  dashboard: {url}   (jobs: ember job submit --address {url} -- ...)")
    print()
    if kind == "head":
        print("To connect a driver to this cluster:")
        print("    import ember")
        print(f'    ember.init(address="{info["head"]}")   # or address="auto" on this machine')
        print()
        print("To add another node to this cluster, run on that machine:")
        print(f"    ember start --address {info['head']}")
        if info["head"].startswith("127.0.0.1:"):
            print("  (the head listens on loopback only; other machines need `--node-ip-address <this machine's IP>`)")
    else:
        print(f"Joined the cluster at {info['head']} as node {info['node_manager']}.")
    print()
    print("To stop what `ember start` started on this machine: ember stop")


def _block(processes: list) -> int:
    """Stay in the foreground until a process exits, Ctrl-C or SIGTERM; then stop them all."""

    def interrupt(*_):
        raise KeyboardInterrupt

    # A shell starts background jobs with SIGINT ignored; `--block` means stoppable either way.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        while all(p.poll() is None for p in processes):
            time.sleep(0.2)
        print("ember start: a process exited; stopping.", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    pids = {p.pid for p in processes}
    # The autoscaler first: it stops the nodes it launched before the head goes.
    _stop_entries(sorted((e for e in launcher.list_started() if e["pid"] in pids), key=_stop_order))
    for process in processes:
        process.wait()
    return 0


# --- ember stop -------------------------------------------------------------------------------------
def _stop_order(entry: dict) -> int:
    return {"autoscaler": 0, "node": 1, "head": 2}.get(entry.get("kind"), 1)


def _stop_entries(entries: list, timeout: float = 10.0) -> int:
    stopped = 0
    for entry in entries:
        if entry.get("alive", True) and launcher.terminate(entry["pid"], entry.get("create_time"), timeout):
            stopped += 1
        launcher.remove_store_files(entry.get("store_prefix", ""))
        launcher.forget_started(entry["pid"])
        if entry.get("kind") == "head":
            runtime_dir.remove_cluster_file(entry["pid"])
    return stopped


def cmd_stop(args) -> int:
    entries = sorted(launcher.list_started(), key=_stop_order)
    stopped = _stop_entries(entries, timeout=args.grace_period)
    print(f"Stopped {stopped} Ember process{'es' if stopped != 1 else ''}." if stopped else "Nothing to stop.")
    return 0


# --- ember status -----------------------------------------------------------------------------------
def _query_nodes(address: str, timeout: float = 10.0) -> dict:
    import zmq

    from ember.runtime import protocol, transport

    # ZeroMQ retries a refused connection silently; a plain TCP connect tells at once that nothing listens.
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=min(timeout, 5.0)).close()
    except ValueError:
        raise ConnectionError(f"{address!r} is not a HOST:PORT address.") from None
    except OSError as error:
        raise ConnectionError(f"No Ember head is listening at {address}: {error}") from None
    if not os.environ.get(TOKEN_VARIABLE):
        token = runtime_dir.secret_for(address)
        if token:
            os.environ[TOKEN_VARIABLE] = token
    try:
        sock = transport.connect_checked(address, timeout=min(timeout, 2.0))
    except (transport.AuthenticationError, transport.MissingSecretError):
        raise ConnectionError(runtime_dir.missing_secret_message(address)) from None
    try:
        sock.send_multipart(protocol.encode({"op": protocol.GET_NODES, "rid": b"status"}))
        if not sock.poll(int(timeout * 1000)):
            raise ConnectionError(f"No Ember head answered at {address} within {timeout:g} s.")
        header, _ = protocol.decode(sock.recv_multipart())
        header["autoscaler"] = _autoscaler_status(sock, timeout)
        header["dashboard_url"] = _dashboard_url(sock, timeout)
    except zmq.ZMQError as error:
        raise ConnectionError(f"Could not reach an Ember head at {address}: {error}") from None
    finally:
        sock.close(0)
    if header.get("op") == protocol.ERROR:
        raise ConnectionError(f"The head at {address} answered with an error: {header.get('error')}")
    return header


def _autoscaler_status(sock, timeout: float) -> dict | None:
    """What the autoscaler's monitor last published in the head's KV (None without an autoscaler)."""
    import msgpack

    from ember.autoscaler import STATUS_KEY
    from ember.runtime import protocol

    sock.send_multipart(protocol.encode({"op": protocol.KV_GET, "key": STATUS_KEY, "rid": b"autoscaler"}))
    if not sock.poll(int(timeout * 1000)):
        return None
    header, frames = protocol.decode(sock.recv_multipart())
    if not header.get("found") or not frames:
        return None
    try:
        status = msgpack.unpackb(bytes(frames[0]), raw=False)
    except ValueError:
        return None
    return status if isinstance(status, dict) else None


def _dashboard_url(sock, timeout: float) -> str | None:
    from ember.dashboard import URL_KEY
    from ember.runtime import protocol

    sock.send_multipart(protocol.encode({"op": protocol.KV_GET, "key": URL_KEY, "rid": b"dashboard"}))
    if not sock.poll(int(timeout * 1000)):
        return None
    header, frames = protocol.decode(sock.recv_multipart())
    return bytes(frames[0]).decode() if header.get("found") and frames else None


def _logical(resources: dict) -> dict:
    return {k: v for k, v in resources.items() if k not in ("memory", "object_store_memory")}


def _fmt_amount(name: str, value: float) -> str:
    if name in ("memory", "object_store_memory"):
        return f"{value / 2**30:.2f} GiB"
    return f"{value:g}"


def _fmt_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return str(value)


def format_status(address: str, reply: dict) -> str:
    """The text `ember status` prints for a GET_NODES reply (Ray's ``ray status`` sections)."""
    nodes = reply.get("nodes", [])
    alive = [n for n in nodes if n.get("alive")]
    lines = [
        f"======== Ember cluster at {address} ========",
        *([f"Dashboard: {reply['dashboard_url']}"] if reply.get("dashboard_url") else []),
        "",
        f"Nodes ({len(alive)} alive, {len(nodes) - len(alive)} dead):",
    ]
    for node in nodes:
        node_id = node["node_id"].hex() if isinstance(node["node_id"], bytes) else str(node["node_id"])
        custom = {
            k: v
            for k, v in node.get("resources", {}).items()
            if k not in ("CPU", "GPU", "memory", "object_store_memory")
        }
        lines.append(
            f"  {node_id}  {node.get('address', '?'):<22} {'alive' if node.get('alive') else 'DEAD '}"
            f"  {json.dumps(custom) if custom else ''}".rstrip()
        )
    total: dict = {}
    used: dict = {}
    for node in alive:
        for name, amount in node.get("resources", {}).items():
            total[name] = total.get(name, 0.0) + amount
            used[name] = used.get(name, 0.0) + amount - node.get("available", {}).get(name, amount)
    lines += ["", "Resources (used / total):"]
    for name in sorted(total, key=lambda n: (n not in ("CPU", "GPU"), n)):
        lines.append(f"  {_fmt_amount(name, max(0.0, used[name]))} / {_fmt_amount(name, total[name])} {name}")
    demand: dict = {}
    for node in alive:
        for request in node.get("demand") or []:
            key = json.dumps(request, sort_keys=True)
            demand[key] = demand.get(key, 0) + 1
    for bundle in reply.get("pending_bundles") or []:
        key = json.dumps(bundle, sort_keys=True) + " (placement group)"
        demand[key] = demand.get(key, 0) + 1
    lines += ["", "Pending demand:"]
    lines += [f"  {shape}: {count} pending" for shape, count in sorted(demand.items())] or ["  (no resource demands)"]
    lines += ["", "Object store:"]
    for node in alive:
        store = node.get("store") or {}
        node_id = node["node_id"].hex() if isinstance(node["node_id"], bytes) else str(node["node_id"])
        if store:
            lines.append(
                f"  {node_id[:12]}  {_fmt_bytes(store.get('used', 0))} / {_fmt_bytes(store.get('capacity', 0))}"
                f" in {store.get('num_objects', 0)} objects, {_fmt_bytes(store.get('spilled', 0))} spilled"
            )
        else:
            lines.append(f"  {node_id[:12]}  (no report yet)")
    gpu_rows = []
    for node in alive:
        node_id = node["node_id"].hex() if isinstance(node["node_id"], bytes) else str(node["node_id"])
        for gpu in node.get("gpus") or []:
            holder = gpu.get("holder")
            holder = holder.hex() if isinstance(holder, bytes) else (holder or "-")
            gpu_rows.append(f"  {node_id[:12]}  GPU {gpu.get('gpu_id')}  {holder}  share {gpu.get('share', 0):g}")
    if gpu_rows:
        lines += ["", "GPUs (node, GPU id, holder, share):", *gpu_rows]
    autoscaler = reply.get("autoscaler")
    if autoscaler:
        launched = autoscaler.get("launched") or []
        shape = json.dumps(_logical(autoscaler.get("worker_shape", {})))
        lines += [
            "",
            f"Autoscaler: {len(launched)} of at most {autoscaler.get('max_workers')} worker nodes "
            f"of {shape}, idle timeout {autoscaler.get('idle_timeout_s')} s",
        ]
        lines += [f"  {node_id}  {state}" for node_id, state in launched]
        for request in autoscaler.get("infeasible") or []:
            lines.append(f"  infeasible (fits no node and no worker node): {json.dumps(request)}")
    return "\n".join(lines)


def _find_address(args) -> str | None:
    if args.address:
        return args.address
    if os.environ.get("EMBER_ADDRESS"):
        return os.environ["EMBER_ADDRESS"]
    from ember.api import _read_cluster_file

    try:
        return _read_cluster_file()
    except ConnectionError:
        return None


def cmd_status(args) -> int:
    address = _find_address(args)
    if not address:
        print("ember status: no cluster found on this machine; pass --address HOST:PORT.", file=sys.stderr)
        return 1
    try:
        reply = _query_nodes(address)
    except ConnectionError as error:
        print(f"ember status: {error}", file=sys.stderr)
        return 1
    print(format_status(address, reply))
    return 0


# --- entry point --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ember", description="Start, stop and inspect Ember clusters.")
    commands = parser.add_subparsers(dest="command", required=True)

    start = commands.add_parser("start", help="start a head, or a node that joins one, on this machine")
    start.add_argument("--head", action="store_true", help="start the head (and a node manager)")
    start.add_argument("--address", help="HOST:PORT of the head to join")
    start.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"the head's port (default {DEFAULT_PORT}; 0: any)"
    )
    start.add_argument("--num-cpus", type=float, default=None, help="logical CPUs (default: this machine's count)")
    start.add_argument("--num-gpus", type=float, default=None, help="GPUs (default: those NVML finds)")
    start.add_argument("--resources", type=_parse_resources, default=None, help="JSON map of custom resources")
    start.add_argument("--object-store-memory", type=int, default=None, help="object store size in bytes")
    start.add_argument("--node-ip-address", default=None, help="the address this node listens on and advertises")
    start.add_argument("--block", action="store_true", help="stay in the foreground; Ctrl-C stops")
    start.add_argument(
        "--dashboard-port",
        type=int,
        default=None,
        help="the dashboard's port (default EMBER_DASHBOARD_PORT or 8265; 0: any free port; -1: no dashboard)",
    )
    start.add_argument(
        "--autoscale",
        type=_parse_autoscale,
        default=None,
        help="max_workers=N,idle_timeout_s=S[,worker_cpus=C,worker_gpus=G]: start local worker nodes on demand",
    )
    start.set_defaults(func=cmd_start)

    stop = commands.add_parser("stop", help="stop what `ember start` started on this machine")
    stop.add_argument("--grace-period", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    stop.set_defaults(func=cmd_stop)

    status = commands.add_parser("status", help="nodes, resources, demand and object store usage")
    status.add_argument("--address", help="HOST:PORT of the head (default: the cluster on this machine)")
    status.set_defaults(func=cmd_status)

    from ember import cli_jobs

    cli_jobs.add_parser(commands)
    return parser


def main(argv=None) -> int:
    """The ``ember`` command's entry point."""
    args = build_parser().parse_args(argv)
    # `ember stop` from another terminal must not be interrupted half-way by a stray SIGHUP.
    if args.command == "stop":
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if args.command == "job":
        from ember import cli_jobs

        return cli_jobs.run(args)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
