"""Nobody without the cluster's secret gets in, on loopback too (issue 8).

The stranger here is what an attacker on the same machine would run: plain pyzmq and msgpack, no
secret, no Ember imported, as another user when the tests run as root. It is given the addresses
(an attacker reads them from /proc/net/tcp) and tries what would run its code as the cluster's
user, or stop the cluster; every socket must refuse the handshake, so nothing it sends is handled.
"""

import json
import os
import stat
import subprocess
import sys

import pytest
from conftest import run_driver, wait_for
from multinode import LocalCluster

import ember
from ember import api
from ember.runtime import launcher, protocol, runtime_dir, transport
from ember.runtime.client.core_client import current_client

NOBODY = 65534

# The stranger: reads a JSON plan on stdin, tries each attack, prints what came back (JSON).
STRANGER = r"""
import json, os, pickle, sys, time
import msgpack, zmq
from zmq.utils.monitor import recv_monitor_message

plan = json.loads(sys.stdin.read())
marker = plan["marker"]


class Evil:
    # Unpickling this creates the marker file: code of ours run by whoever unpickles it.
    def __reduce__(self):
        return (open, (marker, "w"))


evil = pickle.dumps(Evil())
ctx = zmq.Context()
FAILED = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


def dealer(address):
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    keys = plan.get("keys")
    if keys:  # Curve with the server's public key (as if leaked) and a key pair of our own
        sock.curve_serverkey = keys["server_public"].encode()
        if keys.get("client_public"):
            sock.curve_publickey = keys["client_public"].encode()
            sock.curve_secretkey = keys["client_secret"].encode()
        else:
            sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | FAILED)
    sock.connect("tcp://" + address.split("#")[0])
    return sock, monitor


def binary(value):
    # JSON has no bytes: the plan writes them as "hex:...".
    if isinstance(value, dict):
        return {k: binary(v) for k, v in value.items()}
    if isinstance(value, str) and value.startswith("hex:"):
        return bytes.fromhex(value[4:])
    return value


def attempt(address, header, frames=()):
    sock, monitor = dealer(address)
    sock.send_multipart([msgpack.packb(binary(header), use_bin_type=True), *frames])
    handshake = None
    reply = None
    deadline = time.monotonic() + plan["wait_s"]
    while time.monotonic() < deadline and reply is None:
        if handshake is None and monitor.poll(10):
            event = recv_monitor_message(monitor)["event"]
            handshake = "succeeded" if event == zmq.EVENT_HANDSHAKE_SUCCEEDED else "refused"
        if sock.poll(10):
            reply = msgpack.unpackb(sock.recv_multipart()[0], raw=False)
    # The reply can be read before the monitor's event (a loaded machine): the event is on its way.
    if handshake is None and reply is not None and monitor.poll(2000):
        event = recv_monitor_message(monitor)["event"]
        handshake = "succeeded" if event == zmq.EVENT_HANDSHAKE_SUCCEEDED else "refused"
    sock.disable_monitor()
    monitor.close(0)
    sock.close(0)
    return {"handshake": handshake, "reply": reply is not None}


results = {}
for name, target, header, payload in plan["attacks"]:
    frames = [evil if frame == "EVIL" else frame.encode() for frame in payload]
    results[name] = attempt(plan["addresses"][target], header, frames)

sub = ctx.socket(zmq.SUB)
sub.linger = 0
if plan.get("keys"):
    sub.curve_serverkey = plan["keys"]["server_public"].encode()
    sub.curve_publickey, sub.curve_secretkey = zmq.curve_keypair()
    if plan["keys"].get("client_public"):
        sub.curve_publickey = plan["keys"]["client_public"].encode()
        sub.curve_secretkey = plan["keys"]["client_secret"].encode()
monitor = sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | FAILED)
sub.setsockopt(zmq.SUBSCRIBE, b"")
sub.connect("tcp://" + plan["addresses"]["publisher"])
event = recv_monitor_message(monitor)["event"] if monitor.poll(int(plan["wait_s"] * 1000)) else None
results["subscribe to the event hub"] = {
    "handshake": None if event is None else "succeeded" if event == zmq.EVENT_HANDSHAKE_SUCCEEDED else "refused",
    "reply": bool(sub.poll(int(plan["wait_s"] * 1000))),
}
sub.disable_monitor()
monitor.close(0)
sub.close(0)
results["imported ember"] = any(m == "ember" or m.startswith("ember.") for m in sys.modules)
print(json.dumps(results), flush=True)
# Out without libzmq's context teardown, which once waited past the test's timeout in CI (monitor sockets).
os._exit(0)
"""


def attacks(node_id: str) -> list:
    """(name, target, header, payload frames): what a stranger sends. "EVIL" is the malicious pickle."""
    function_key = "hex:" + b"fn:stranger".hex()
    return [
        ("kv write", "head", {"op": protocol.KV_PUT, "rid": "hex:01", "key": function_key}, ["EVIL"]),
        ("actor creation from the kv", "head",
         {"op": protocol.CREATE_ACTOR, "rid": "hex:02", "actor_id": "hex:" + "aa" * 16, "job_id": "hex:0001",
          "spec": {"class_key": function_key, "class_name": "Evil", "resources": {}}}, ["EVIL"]),
        ("shutdown", "head", {"op": protocol.SHUTDOWN, "rid": "hex:03"}, []),
        ("node registration", "head",
         {"op": protocol.REGISTER_NODE, "rid": "hex:04", "node_id": "hex:" + "bb" * 16, "address": "127.0.0.1:1",
          "resources": {"CPU": 64.0}, "host": "127.0.0.1"}, []),
        ("node dead", "node_manager", {"op": protocol.NODE_DEAD, "node_id": "hex:" + node_id}, []),
        ("lease request", "node_manager",
         {"op": protocol.REQUEST_LEASE, "rid": "hex:05", "resources": {"CPU": 1.0}}, []),
        ("task", "worker", {"op": protocol.EXECUTE_TASK, "rid": "hex:06", "function": function_key}, ["EVIL"]),
        ("actor call", "worker",
         {"op": protocol.ACTOR_CALL, "rid": "hex:07", "method": "ping", "seq": 0}, ["EVIL"]),
        ("owner service", "owner", {"op": protocol.GET_OBJECT, "rid": "hex:08", "oid": "hex:" + "cc" * 28}, ["EVIL"]),
    ]


def _as_nobody() -> dict:
    """subprocess arguments that run a Python with pyzmq as another user, or {} where we cannot
    (not root, or this Python lives where that user cannot read it)."""
    if os.getuid() != 0:
        return {}
    other = {"user": NOBODY, "group": NOBODY, "extra_groups": []}
    try:
        probe = subprocess.run([sys.executable, "-I", "-c", "import zmq, msgpack"], cwd="/", timeout=60,
                               capture_output=True, **other)
    except OSError:
        return {}
    return other if probe.returncode == 0 else {}


def run_stranger(plan: dict) -> dict:
    """Run the stranger as another user (when we can) with a clean environment: no secret, no Ember."""
    result = subprocess.run(
        [sys.executable, "-I", "-c", STRANGER],
        input=json.dumps(plan),
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ.get("PATH", "/usr/bin")},
        cwd="/",
        **_as_nobody(),
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@ember.remote
class Pinger:
    def ping(self, value=None):
        return "pong"


@ember.remote
def add(a, b):
    return a + b


@pytest.fixture
def targets(cluster, tmp_path):
    """The shared cluster's sockets (head, its event hub, node manager, an actor's worker, this
    driver's owner service) and a marker path that the cluster's user could create."""
    pinger = Pinger.options(name="security-pinger").remote()
    assert ember.get(pinger.ping.remote()) == "pong"
    client = current_client()
    reply, _ = client.request("head", {"op": protocol.GET_NAMED_ACTOR, "name": "security-pinger",
                                       "namespace": client.current_namespace()})
    addresses = {
        "head": cluster.address,
        "publisher": client.publisher_address,
        "node_manager": cluster.address_info["node_manager"],
        "worker": reply.actor.address,
        "owner": client.address,
    }
    marker_dir = tmp_path / "markers"
    marker_dir.mkdir()
    marker_dir.chmod(0o777)  # so a refusal, not a permission, is what keeps the marker away
    yield addresses, str(marker_dir / "pwned")
    ember.kill(pinger)


def cluster_still_works(cluster, before_nodes: int) -> None:
    assert ember.get(add.remote(1, 2)) == 3
    assert len([n for n in ember.nodes() if n["Alive"]]) == before_nodes
    reply, _ = current_client().request("head", {"op": protocol.KV_GET, "key": b"fn:stranger"})
    assert not reply.found


@pytest.mark.parametrize("credentials", ["none", "own key pair and the server's public key"])
def test_a_stranger_without_the_secret_is_refused_everywhere(cluster, targets, credentials):
    addresses, marker = targets
    before_nodes = len([n for n in ember.nodes() if n["Alive"]])
    plan = {
        "addresses": addresses,
        "marker": marker,
        "wait_s": 1.0,
        "attacks": attacks(cluster.address_info["node_id"]),
    }
    if credentials != "none":
        # The old weakness: a server key anyone could learn let any client key in. Now ZAP checks it.
        plan["keys"] = {"server_public": transport.cluster_keys().server_public.decode()}
    results = run_stranger(plan)
    assert results.pop("imported ember") is False
    assert results.pop("subscribe to the event hub") == {"handshake": "refused", "reply": False}
    assert set(results) == {name for name, *_ in attacks("")}
    for name, outcome in results.items():
        assert outcome == {"handshake": "refused", "reply": False}, name
    assert not os.path.exists(marker)
    cluster_still_works(cluster, before_nodes)


def test_the_same_stranger_with_the_secret_gets_answers(cluster, targets):
    # The control: with the cluster's keys the stranger's messages are answered, so the refusals
    # above come from authentication and not from a malformed attack. Only harmless ops here.
    addresses, marker = targets
    keys = transport.cluster_keys()
    plan = {
        "addresses": addresses,
        "marker": marker,
        "wait_s": 5.0,
        "keys": {
            "server_public": keys.server_public.decode(),
            "client_public": keys.client_public.decode(),
            "client_secret": keys.client_secret.decode(),
        },
        "attacks": [["nodes", "head", {"op": protocol.GET_NODES, "rid": "hex:01"}, []]],
    }
    results = run_stranger(plan)
    assert results["nodes"] == {"handshake": "succeeded", "reply": True}
    assert results["subscribe to the event hub"]["handshake"] == "succeeded"


def test_a_driver_with_a_wrong_or_no_secret_is_told_what_to_do(cluster, tmp_path):
    code = f"""
        import ember
        from ember.runtime import transport
        try:
            ember.init(address={cluster.address!r})
        except transport.AuthenticationError as error:
            print("REFUSED", error)
        else:
            print("CONNECTED")
    """
    wrong = run_driver(code, env={"EMBER_CLUSTER_TOKEN": "not-the-secret"}).stdout
    # No secret at all: another runtime directory, so not even this user's cluster file is found.
    private = tmp_path / "xdg"
    private.mkdir(mode=0o700)
    none = run_driver(code, env={"EMBER_CLUSTER_TOKEN": "", "XDG_RUNTIME_DIR": str(private)}).stdout
    for out in (wrong, none):
        assert out.startswith("REFUSED"), out
        assert "requires its secret" in out and "EMBER_CLUSTER_TOKEN" in out and "clusters/<pid>" in out
        assert "within 10 s" not in out  # the handshake failure, not the timeout of a silent head
    # This user's drivers on this machine find the secret in the cluster file.
    same_user = run_driver(code, env={"EMBER_CLUSTER_TOKEN": ""}).stdout
    assert same_user.startswith("CONNECTED"), same_user


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_runtime_files_are_private(cluster):
    assert mode(runtime_dir.runtime_dir()) == 0o700
    session = cluster.address_info["session_dir"]
    assert mode(session) == 0o700 and mode(os.path.join(session, "logs")) == 0o700
    logs = [os.path.join(session, "logs", name) for name in os.listdir(os.path.join(session, "logs"))]
    assert logs and all(mode(path) == 0o600 for path in logs)
    cluster_file = os.path.join(runtime_dir.cluster_dir(), str(api._cluster_process.pid))
    assert mode(cluster_file) == 0o600
    # Spill files, and store files restored from them, hold the user's data: 0600 as well.
    out = run_driver(
        """
        import glob, json, os, stat, numpy as np, ember
        from ember import api
        ember.init(num_cpus=1, object_store_memory=64 * 2**20)
        refs = [ember.put(np.full(20 * 2**20 // 8, i, dtype=np.int64)) for i in range(5)]
        spill = glob.glob(api._context.address_info["session_dir"] + "/spill/*/*")
        spill_modes = {oct(stat.S_IMODE(os.stat(p).st_mode)) for p in spill}
        assert int(ember.get(refs[0])[0]) == 0  # restored from its spill file
        prefix = api._cluster_process.store_prefix
        store_modes = {oct(stat.S_IMODE(os.stat(p).st_mode)) for p in glob.glob(f"/dev/shm/{prefix}-*")}
        print(json.dumps({"spilled": len(spill), "spill": sorted(spill_modes), "store": sorted(store_modes)}))
        ember.shutdown()
        """,
        timeout=120,
    ).stdout
    found = json.loads(out.strip().splitlines()[-1])
    assert found["spilled"] >= 2 and found["spill"] == ["0o600"] and found["store"] == ["0o600"]


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")
def test_address_auto_trusts_only_this_users_cluster_files(tmp_path):
    # A live cluster process, and a cluster file for it that another user could have planted.
    cluster = LocalCluster({"CPU": 1.0})
    path = os.path.join(runtime_dir.cluster_dir(), str(cluster.nodes[0]["pid"]))
    try:
        runtime_dir.write_cluster_file(cluster.nodes[0]["pid"], cluster.address, cluster.token)
        assert (cluster.address, cluster.token) in runtime_dir.live_clusters()
        os.chown(path, NOBODY, NOBODY)
        assert all(address != cluster.address for address, _ in runtime_dir.live_clusters())
        assert runtime_dir.secret_for(cluster.address) is None
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        cluster.stop()
    # A runtime directory that someone else made (or a symlink to one) is refused outright.
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, NOBODY, NOBODY)
    with pytest.raises(runtime_dir.UnsafeRuntimeDirError):
        runtime_dir.ensure_private_dir(str(foreign))
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(runtime_dir.UnsafeRuntimeDirError):
        runtime_dir.ensure_private_dir(str(link))
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    assert mode(runtime_dir.ensure_private_dir(str(loose))) == 0o700


def test_a_node_with_a_wrong_secret_cannot_join():
    cluster = LocalCluster({"CPU": 1.0})
    try:
        # A node manager with a wrong secret registers first, then one with the right secret: only the
        # second one's registration is handled.
        env = dict(cluster.env, EMBER_CLUSTER_TOKEN="wrong")
        info, process = launcher.start_cluster_process(
            {"CPU": 1.0, "object_store_memory": float(64 * 2**20)},
            cluster.session_dir,
            address=cluster.address,
            watch_stdin=True,
            process_env=env,
        )
        try:
            honest = cluster.add_node({"CPU": 1.0})
            wait_for(lambda: len(cluster.node_table()) == 2, message="the honest node to join")
            joined = {node["node_id"].hex() for node in cluster.node_table()}
            assert honest["node_id"] in joined and info["node_id"] not in joined
        finally:
            process.stdin.close()
            process.wait(15)
            launcher.remove_store_files(info["store_prefix"])
    finally:
        cluster.stop()


def test_local_peers_meet_in_the_private_directory_others_over_curve(cluster):
    keys = transport.cluster_keys()
    path = transport._ipc_path(keys, cluster.address)
    assert stat.S_ISSOCK(os.lstat(path).st_mode) and mode(os.path.dirname(path)) == 0o700
    assert transport._endpoint(keys, cluster.address) == f"ipc://{path}"
    # A wrong secret names another file, which does not exist: such a process takes TCP and Curve.
    assert transport._endpoint(transport.cluster_keys("wrong"), cluster.address) == f"tcp://{cluster.address}"
