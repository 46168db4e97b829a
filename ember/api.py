"""The public functions of ``ember``, with Ray's names, arguments and semantics."""

import atexit
import html
import os
import secrets
import subprocess
import threading

import psutil

from ember.actor import ActorClass, ActorHandle, handle_from_info, kill  # noqa: F401 - re-exported
from ember.connection import connected_client
from ember.options import check_runtime_env
from ember.remote_function import RemoteFunction
from ember.runtime import accelerators, launcher, protocol, runtime_dir, transport
from ember.runtime.client import core_client
from ember.runtime.client.core_client import CoreClient, set_current_client
from ember.runtime.client.object_ref import ObjectRef, ObjectRefGenerator
from ember.runtime.client.ownership import store_prefix

_state_lock = threading.RLock()
_cluster_process: subprocess.Popen | None = None
_context = None
# This process's EMBER_CLUSTER_TOKEN before init() set it (put back by shutdown()): a cluster's
# secret belongs to the connection, not to the process for ever.
_token_before = None


class EmberContext:
    """What ``ember.init()`` returns: the cluster's address and resources; a context manager that
    shuts Ember down on exit."""

    def __init__(self, address_info: dict):
        self.address_info = address_info

    @property
    def dashboard_url(self) -> str | None:
        """The dashboard's URL (``http://host:port``), or None when the cluster runs none (Ray's
        ``dashboard_url``)."""
        return self.address_info.get("webui_url")

    @property
    def address(self) -> str:
        """The head's address, ``host:port``: what ``init(address=...)`` takes."""
        return self.address_info["address"]

    def __getitem__(self, key):
        return self.address_info[key]

    def _summary(self) -> dict:
        try:
            node_list = nodes()
            total = cluster_resources()
        except Exception:
            node_list, total = [], {}
        return {"address": self.address, "nodes": len([n for n in node_list if n["Alive"]]), "resources": total}

    def __repr__(self):
        info = self._summary()
        resources = ", ".join(f"{k}: {_fmt(k, v)}" for k, v in sorted(info["resources"].items()))
        return f"EmberContext(address={info['address']!r}, nodes={info['nodes']}, resources={{{resources}}})"

    def _repr_html_(self):
        info = self._summary()
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(_fmt(k, v))}</td></tr>"
            for k, v in sorted(info["resources"].items())
        )
        return (
            f"<div class='ember-context'><b>Ember cluster</b>"
            f"<table><tr><td>Address</td><td><code>{html.escape(info['address'])}</code></td></tr>"
            f"<tr><td>Nodes</td><td>{info['nodes']}</td></tr>{rows}</table></div>"
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutdown()

    def disconnect(self):
        """Same as ``ember.shutdown()``."""
        shutdown()


def _fmt(name: str, value: float) -> str:
    if name in ("memory", "object_store_memory"):
        return f"{value / 2**30:.2f} GiB"
    return f"{value:g}"


def is_initialized() -> bool:
    """Whether ``init`` has been called in this process (and ``shutdown`` has not)."""
    return core_client.current_client(required=False) is not None


def init(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict | None = None,
    object_store_memory: int | None = None,
    namespace: str | None = None,
    runtime_env: dict | None = None,
    ignore_reinit_error: bool = False,
    log_to_driver: bool = True,
    include_dashboard: bool | None = None,
    dashboard_host: str | None = None,
    dashboard_port: int | None = None,
    configure_logging: bool = True,
    logging_level=None,
    _node_ip_address=None,
    **unsupported,
) -> EmberContext:
    """Connect to a cluster, starting a local one in the background when there is none.

    ``address``: None or "local" starts a new local cluster (unless EMBER_ADDRESS is set); "auto"
    connects to the cluster started on this machine; "host:port" connects to that head.
    A new local cluster serves the dashboard on ``dashboard_port`` (default EMBER_DASHBOARD_PORT or
    8265, 0: any free port; a taken port falls back to a free one), unless ``include_dashboard=False``;
    ``dashboard_url`` on the returned context says where. A job's driver (``ember job submit``) gets its
    job's runtime_env from EMBER_JOB_RUNTIME_ENV when it passes none itself.
    """
    global _cluster_process, _context, _token_before
    if unsupported:
        raise TypeError(f"init() got unexpected keyword argument(s): {', '.join(sorted(unsupported))}")
    with _state_lock:
        if is_initialized():
            if ignore_reinit_error:
                return _context
            raise RuntimeError(
                "Maybe you called ember.init twice by accident? Ember is already initialized "
                "in this process. Pass ignore_reinit_error=True to ignore this, or call "
                "ember.shutdown() first."
            )
        if dashboard_host is not None:
            raise ValueError("dashboard_host is not supported: the dashboard listens where the head does.")
        if runtime_env is None:
            runtime_env = _job_runtime_env()
        if runtime_env is not None:
            check_runtime_env(runtime_env)
        env_vars = (runtime_env or {}).get("env_vars") or {}
        token_before = os.environ.get(transport.TOKEN_VARIABLE)
        if address is None:
            address = os.environ.get("EMBER_ADDRESS") or None
        if address == "auto":
            address = os.environ.get("EMBER_ADDRESS") or _read_cluster_file()
        if address and address.startswith("ember://"):
            address = address[len("ember://") :]
        if address and address != "local":
            if num_cpus is not None or num_gpus is not None or resources or object_store_memory:
                raise ValueError(
                    "When connecting to an existing cluster, num_cpus, num_gpus, resources and "
                    "object_store_memory must not be given: they are set when the cluster starts."
                )
            if dashboard_port is not None or include_dashboard is not None:
                raise ValueError("include_dashboard and dashboard_port are set when the cluster starts.")
            head_address = address
            _find_secret(head_address)
            try:
                node_manager_address, node_id = _local_node_manager(head_address)
            except BaseException:
                _restore_token(token_before)
                raise
            started = None
        else:
            # Every cluster gets a fresh secret; its processes and ours read it from the environment.
            os.environ[transport.TOKEN_VARIABLE] = secrets.token_hex(32)
            try:
                if include_dashboard is False:
                    dashboard_port = -1
                elif dashboard_port is not None and (
                    isinstance(dashboard_port, bool) or not isinstance(dashboard_port, int) or dashboard_port < 0
                ):
                    raise ValueError(f"dashboard_port must be a port number (0: any port), got {dashboard_port!r}.")
                info, started = _start_local_cluster(num_cpus, num_gpus, resources, object_store_memory, dashboard_port)
            except BaseException:
                _restore_token(token_before)
                raise
            head_address, node_manager_address = info["head"], info["node_manager"]
            node_id = bytes.fromhex(info["node_id"])
        client = CoreClient(
            head_address,
            node_manager_address,
            kind="driver",
            namespace=namespace,
            log_to_driver=log_to_driver,
            # Listen where the node manager does, so workers on other machines can fetch our objects.
            host=node_manager_address.rsplit(":", 1)[0],
            node_id=node_id,
        )
        client.job_env_vars = env_vars
        try:
            client.connect()
            client.runtime_envs.base = client.runtime_envs.for_submission(runtime_env)
        except BaseException:
            client.shutdown()
            if started is not None:
                _stop_cluster(started)
            _restore_token(token_before)
            raise
        _cluster_process = started
        _token_before = token_before
        if started is not None:
            # Reap it the moment it exits, whoever stops it: a kernel (ipykernel) that signals its
            # children at shutdown waits while one is an unreaped zombie (about 30 s).
            threading.Thread(target=started.wait, name="ember-reaper", daemon=True).start()
        set_current_client(client)
        _context = EmberContext(
            {
                "address": head_address,
                "node_manager": node_manager_address,
                "node_id": client.node_id.hex(),
                "session_dir": getattr(started, "session_dir", None),
                "namespace": client.namespace,
                "job_id": client.job_id.hex(),
                "webui_url": info["dashboard_url"] if started is not None else _dashboard_url(client),
            }
        )
        if started is not None:
            runtime_dir.write_cluster_file(started.pid, head_address, transport.current_token())
        return _context


def _restore_token(value: str | None) -> None:
    if value is None:
        os.environ.pop(transport.TOKEN_VARIABLE, None)
    else:
        os.environ[transport.TOKEN_VARIABLE] = value


def _read_cluster_file() -> str:
    """The address of this user's newest live cluster on this machine; its secret goes into our
    environment (where transport, and our child processes, read it)."""
    clusters = runtime_dir.live_clusters()
    if not clusters:
        raise ConnectionError(
            "address='auto' but no Ember cluster of this user was found on this machine: start one with "
            "`ember start --head` or set EMBER_ADDRESS."
        )
    address, token = clusters[0]
    if token:
        os.environ[transport.TOKEN_VARIABLE] = token
    return address


def _find_secret(address: str) -> None:
    """Without a secret in the environment, take the one of this user's cluster at ``address``."""
    if transport.current_token() is None:
        token = runtime_dir.secret_for(address)
        if token:
            os.environ[transport.TOKEN_VARIABLE] = token


def _local_node_manager(head_address: str) -> str:
    """Ask the head for its nodes and pick the one on this machine (else the first one)."""
    import zmq

    try:
        sock = transport.connect_checked(head_address)
    except (transport.AuthenticationError, transport.MissingSecretError):
        raise transport.AuthenticationError(runtime_dir.missing_secret_message(head_address)) from None
    try:
        sock.send_multipart(protocol.encode({"op": protocol.GET_NODES, "rid": b"n"}))
        if not sock.poll(10_000):
            raise ConnectionError(f"No Ember head answered at {head_address} within 10 s.")
        header, _ = protocol.decode(sock.recv_multipart())
    except zmq.ZMQError as error:
        raise ConnectionError(f"Could not reach an Ember head at {head_address}: {error}") from None
    finally:
        sock.close(0)
    alive = [n for n in header["nodes"] if n["alive"]]
    if not alive:
        raise ConnectionError(f"The cluster at {head_address} has no live node.")
    local = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
    for node in alive:
        if node["host"] in local:
            return node["address"], node["node_id"]
    return alive[0]["address"], alive[0]["node_id"]


def _job_runtime_env() -> dict | None:
    """The runtime_env of the job this driver runs as (EMBER_JOB_RUNTIME_ENV, set by its supervisor),
    the default of the job's tasks and actors. Its working_dir and py_modules are package URIs (the
    submitter uploaded them), so its workers get the same unpacked files as this driver's cwd."""
    import json

    from ember.job_submission.common import RUNTIME_ENV_VARIABLE

    text = os.environ.get(RUNTIME_ENV_VARIABLE)
    if not text:
        return None
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"{RUNTIME_ENV_VARIABLE} must hold a JSON object, got {text[:100]!r}.")
    from ember.runtime.runtime_env import uri_key

    if uri_key(value.get("working_dir")) is None:
        value.pop("working_dir", None)  # a path on the submitter's side: not one here
    return value or None


def _dashboard_url(client) -> str | None:
    from ember.dashboard import URL_KEY

    try:
        reply, frames = client.request("head", {"op": protocol.KV_GET, "key": URL_KEY}, timeout=10)
    except Exception:
        return None
    return bytes(frames[0]).decode() if reply.found and frames else None


def _start_local_cluster(num_cpus, num_gpus, resources, object_store_memory, dashboard_port=None):
    node = launcher.node_resources(num_cpus, num_gpus, resources, object_store_memory)
    if num_gpus is None:  # as Ray does: the GPUs this machine has (NVML), with their accelerator type
        for name, amount in accelerators.gpu_resources().items():
            node.setdefault(name, amount)
    try:
        session_dir = launcher.new_session_dir()
        # The job's runtime_env is not the cluster's: its workers are started in it per lease (pools per env).
        return launcher.start_cluster_process(
            node, session_dir, head=True, watch_stdin=True, dashboard_port=dashboard_port
        )
    except RuntimeError as error:
        raise RuntimeError(f"The local Ember cluster failed to start: {error}") from None


def _stop_cluster(process: subprocess.Popen) -> None:
    try:
        process.stdin.close()  # the cluster exits, and stops its workers, when its stdin closes
    except OSError:
        pass
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    # A backstop for a cluster that could not clean up after itself.
    launcher.remove_store_files(getattr(process, "store_prefix", None))


def shutdown() -> None:
    """Disconnect this process; stop the local cluster if this process started it."""
    global _cluster_process, _context, _token_before
    with _state_lock:
        client = core_client.current_client(required=False)
        if client is None:
            return
        set_current_client(None)
        client.shutdown()
        if _cluster_process is not None:
            _stop_cluster(_cluster_process)
            runtime_dir.remove_cluster_file(_cluster_process.pid)
        _restore_token(_token_before)
        _cluster_process = None
        _context = None
        _token_before = None


atexit.register(shutdown)


def remote(*args, **options):
    """Turn a function into a remote function or a class into an actor class.

    Use bare (``@ember.remote``) or with options (``@ember.remote(num_cpus=2, num_returns=2)``).
    """
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("The @ember.remote decorator takes either a function or class, or keyword options only.")

    def decorate(function_or_class):
        return _make_remote(function_or_class, options)

    return decorate


def _make_remote(target, options: dict):
    if isinstance(target, type):
        return ActorClass(target, options)
    if callable(target):
        return RemoteFunction(target, options)
    raise TypeError(f"@ember.remote expects a function or a class, got {type(target).__name__}.")


def _check_refs(object_refs, what: str) -> list:
    if isinstance(object_refs, ObjectRef):
        return [object_refs]
    if isinstance(object_refs, (list, tuple)):
        for ref in object_refs:
            if not isinstance(ref, ObjectRef):
                raise TypeError(f"{what} expects ObjectRefs, but the list contains a {type(ref).__name__}: {ref!r}.")
        return list(object_refs)
    raise TypeError(
        f"{what} expects an ObjectRef or a list of ObjectRefs, got {type(object_refs).__name__}: {object_refs!r}."
    )


def get(object_refs, *, timeout: float | None = None):
    """Block until the object(s) are ready and return their values.

    A task's error is raised here as a TaskError that is also an instance of the task's own exception.
    An ObjectRefGenerator (Ray does not allow one here) is drained: the values of all the refs it
    yields, in order, once its task has ended.
    """
    if isinstance(object_refs, ObjectRefGenerator):
        object_refs = list(object_refs)
    refs = _check_refs(object_refs, "ember.get()")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError(f"timeout must be a non-negative number or None, got {timeout!r}.")
    values = connected_client().get(refs, timeout)
    return values[0] if isinstance(object_refs, ObjectRef) else values


def put(value, *, _owner=None) -> ObjectRef:
    """Store a value in the object store; returns its ObjectRef."""
    if isinstance(value, ObjectRef):
        raise TypeError("Calling put() on an ObjectRef is not allowed: it is already a reference to an object.")
    return connected_client().put(value)


def wait(object_refs, *, num_returns: int = 1, timeout: float | None = None, fetch_local: bool = True):
    """Return ``(ready, not_ready)`` once ``num_returns`` of the refs are ready or ``timeout`` passes.

    The list may hold ObjectRefGenerators too: one is ready when ``next()`` on it would not block
    (its next value is ready, or its task ended with nothing left to yield).
    """
    if isinstance(object_refs, (ObjectRef, ObjectRefGenerator)):
        raise TypeError("wait() expects a list of ObjectRefs, not a single ObjectRef.")
    if not isinstance(object_refs, (list, tuple)):
        _check_refs(object_refs, "ember.wait()")  # raises the usual TypeError
    generators = [ref for ref in object_refs if isinstance(ref, ObjectRefGenerator)]
    refs = _check_refs([ref for ref in object_refs if not isinstance(ref, ObjectRefGenerator)], "ember.wait()")
    if len({ref.binary() for ref in refs}) != len(refs) or len({id(g) for g in generators}) != len(generators):
        raise ValueError("wait() got the same ObjectRef more than once.")
    refs = list(object_refs)
    if not refs:
        return [], []
    if not isinstance(num_returns, int) or num_returns < 0:
        raise ValueError(f"num_returns must be a non-negative int, got {num_returns!r}.")
    if num_returns > len(refs):
        raise ValueError(f"num_returns ({num_returns}) cannot exceed the number of refs ({len(refs)}).")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError(f"timeout must be a non-negative number or None, got {timeout!r}.")
    return connected_client().wait(refs, num_returns, timeout, fetch_local)


def cancel(object_ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that makes ``object_ref``: a queued task never runs; a running one gets
    TaskCancelledError raised inside it (``force=True`` kills its worker instead).

    An ObjectRefGenerator cancels its generator task: the values it yielded stay readable, and the
    next ref it yields holds the TaskCancelledError.
    """
    client = connected_client()
    if isinstance(object_ref, ObjectRefGenerator):
        task_id = object_ref._task_id()  # a generator never leaves the process that submitted it
    elif isinstance(object_ref, ObjectRef):
        if object_ref.owner_address() != client.address:
            raise ValueError("Only the process that submitted a task (its owner) can cancel it.")
        task_id = object_ref.task_id()
    else:
        raise TypeError(f"cancel() expects an ObjectRef or an ObjectRefGenerator, got {type(object_ref).__name__}.")
    spec = client.submitter.specs.get(task_id)
    if force and spec is not None and spec.actor is not None:
        raise ValueError("force=True is not supported for actor tasks; use ember.kill() on the actor.")
    client.call_soon(client.submitter.cancel, task_id, force, recursive)


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of the named actor ``name`` (in ``namespace``, by default the job's own)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"get_actor() expects a non-empty actor name, got {name!r}.")
    client = connected_client()
    namespace = namespace or client.current_namespace()
    reply, _ = client.request("head", {"op": protocol.GET_NAMED_ACTOR, "name": name, "namespace": namespace})
    if reply.actor is None:
        raise ValueError(
            f"Failed to look up actor {name!r} in namespace {namespace!r}: no live actor has that name there."
        )
    return handle_from_info(reply.actor)


def _nodes_raw() -> list:
    reply, _ = connected_client().request("head", {"op": protocol.GET_NODES})
    return reply.nodes or []


def nodes() -> list:
    """One dict per node, as Ray's ``ray.nodes()``."""
    result = []
    for node in _nodes_raw():
        host, port = node["address"].rsplit(":", 1)
        result.append(
            {
                "NodeID": node["node_id"].hex(),
                "Alive": node["alive"],
                "alive": node["alive"],
                "NodeManagerAddress": node["host"] or host,
                "NodeManagerPort": int(port),
                "NodeManagerHostname": os.uname().nodename,
                "Resources": node["resources"],
                "ObjectStoreSocketName": f"/dev/shm/{store_prefix(node['node_id'])}",
                "ObjectStore": node.get("store", {}),
                # Ember's own: who holds which GPU (gpu_id, holder, share), as the head's GPU table has it.
                "GPUs": node.get("gpus", []),
                # Ember's own: [bytes in use, bytes in all] of the node machine's memory.
                "RAM": node.get("ram"),
            }
        )
    return result


def _sum(key: str) -> dict:
    total: dict = {}
    for node in _nodes_raw():
        if node["alive"]:
            for name, amount in node[key].items():
                total[name] = total.get(name, 0) + amount
    return total


def cluster_resources() -> dict:
    """The total resources of all live nodes."""
    return _sum("resources")


def available_resources() -> dict:
    """The resources not held by tasks or actors right now (as last reported by the nodes)."""
    return {name: amount for name, amount in _sum("available").items() if amount > 0}


def free(object_refs) -> None:
    """Release the values of owned objects now (``ray.internal.free``)."""
    connected_client().free(_check_refs(object_refs, "free()"))
