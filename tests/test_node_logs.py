"""Logs per node and worker (issue 15): each node manager lists and reads its own log files
(runtime/node/log_files.py), for ``ember.util.state.list_logs``/``get_log`` and the dashboard's Logs page.

The cluster: a head with its node, a second node manager with a session directory of its own (as on
a second machine), and a third sharing the head's session directory (as a second node manager on
the head's machine would)."""

import json
import os
import tempfile

import httpx
import pytest
from multinode import LocalCluster

from ember.runtime import launcher, runtime_dir
from ember.runtime.messages import LOG_READ_MAX
from ember.runtime.node.log_files import NODE_MANAGER, WORKER, LogTable, NoSuchLogFile, read_part, read_range
from tests.conftest import run_driver, wait_for


class _Process:
    def __init__(self, pid, returncode=None):
        self.pid = pid
        self.returncode = returncode


# --- the table and the reads, without processes --------------------------------------------------------
def test_a_node_resolves_only_its_own_files(tmp_path):
    table = LogTable(str(tmp_path), own_pid=10)
    worker = _Process(11)
    table.add_worker(str(tmp_path / "worker-1.log"), worker)
    (tmp_path / "cluster-10.log").write_text("node\n")
    (tmp_path / "worker-1.log").write_text("w\n")
    (tmp_path / "worker-2.log").write_text("another node's worker\n")  # same directory, not ours
    assert table.resolve("worker-1.log").pid == 11
    assert table.resolve(pid=10).kind == NODE_MANAGER and table.resolve(pid=11).kind == WORKER
    for bad in ("../secret", "worker-2.log", "", "..", str(tmp_path / "worker-1.log"), "cluster-10.log/.."):
        with pytest.raises(NoSuchLogFile):
            table.resolve(bad)
    with pytest.raises(NoSuchLogFile):
        table.resolve("worker-1.log", pid=12)  # the name and the pid must agree
    with pytest.raises(NoSuchLogFile):
        table.resolve(pid=99)
    with pytest.raises(ValueError):
        table.resolve()
    with pytest.raises(ValueError):
        table.add_worker("", worker)
    assert [(f["name"], f["alive"]) for f in table.listing()] == [("cluster-10.log", True), ("worker-1.log", True)]
    worker.returncode = -9
    assert table.listing()[1]["alive"] is False  # an exited worker's log stays listed


def test_exited_workers_logs_are_capped(tmp_path):
    table = LogTable(str(tmp_path), own_pid=1, ended_cap=2)
    processes = [_Process(100 + i) for i in range(4)]
    for i, process in enumerate(processes):
        (tmp_path / f"worker-{i}.log").write_text("x")
        table.add_worker(str(tmp_path / f"worker-{i}.log"), process)
    for process in processes[:3]:
        process.returncode = 0
    names = [f["name"] for f in table.listing()]
    # The oldest exited one went; the running one and the two newest exited ones stay.
    assert names == ["worker-1.log", "worker-2.log", "worker-3.log"]
    os.unlink(tmp_path / "worker-3.log")
    assert [f["name"] for f in table.listing()] == ["worker-1.log", "worker-2.log"]  # removed files are not listed
    for i in range(4, 20):  # workers that start and exit while nobody lists: the table stays bounded
        table.add_worker(str(tmp_path / f"worker-{i}.log"), _Process(100 + i, returncode=0))
    assert len(table.entries) <= 2 * 2 + 1


def test_reads_are_bounded(tmp_path):
    assert read_range(100, 10, None, 5) == (90, 10)
    assert read_range(5, 10, None, 5) == (0, 5)
    assert read_range(100, None, 40, 30) == (40, 30)
    assert read_range(100, None, 90, 30) == (90, 10)
    assert read_range(100, None, 200, 30) == (100, 0)
    assert read_range(10 * LOG_READ_MAX, None, 0, 10 * LOG_READ_MAX) == (0, LOG_READ_MAX)
    path = tmp_path / "worker-1.log"
    path.write_bytes(b"abcdefghij")
    assert read_part(str(path), 3, None, 0) == (10, 7, b"hij")
    assert read_part(str(path), None, 2, 3) == (10, 2, b"cde")
    os.symlink(path, tmp_path / "worker-2.log")
    with pytest.raises(OSError):
        read_part(str(tmp_path / "worker-2.log"), 3, None, 0)  # a link planted where a log was


# --- on a cluster ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def three_nodes():
    previous = os.environ.get("EMBER_DASHBOARD_PORT")
    os.environ["EMBER_DASHBOARD_PORT"] = "0"  # read by the head's process as it starts: any free port
    try:
        cluster = LocalCluster({"CPU": 1.0})
    finally:
        if previous is None:
            del os.environ["EMBER_DASHBOARD_PORT"]
        else:
            os.environ["EMBER_DASHBOARD_PORT"] = previous
    own_dir = tempfile.mkdtemp(prefix="ember-second-machine-", dir=runtime_dir.runtime_dir())
    try:
        resources = {"CPU": 1.0, "second": 1.0, "object_store_memory": 256.0 * 2**20}
        info, process = launcher.start_cluster_process(
            resources, own_dir, address=cluster.address, watch_stdin=True, process_env=cluster.env
        )
        cluster.processes.append(process)
        cluster.nodes.append(info)
        cluster.add_node({"CPU": 1.0, "third": 1.0})
        yield cluster
    finally:
        cluster.stop()


PRELUDE = """
import json, os, signal, time
import ember
from ember.util.state import get_log, list_logs
ember.init(address={address!r})
deadline = time.monotonic() + 60
while sum(node["Alive"] for node in ember.nodes()) < 3:
    assert time.monotonic() < deadline, "the nodes did not join"
    time.sleep(0.05)

@ember.remote(resources={{"second": 1}})
def shout(marker):
    print(marker, flush=True)
    return os.getpid(), ember.get_runtime_context().get_node_id()

@ember.remote(resources={{"second": 0.5}})
class Doomed:
    def pid(self):
        print("doomed actor says goodbye", flush=True)
        return os.getpid()
"""


def _driver(cluster, body: str) -> dict:
    code = PRELUDE.format(address=cluster.address) + body
    result = run_driver(code, timeout=120, env={"EMBER_CLUSTER_TOKEN": cluster.token})
    # The driver's stdout also carries its workers' prints, which may come after its own last line.
    return json.loads([line for line in result.stdout.splitlines() if line.startswith('{"')][-1])


def test_get_log_finds_a_task_print_on_another_machine(three_nodes):
    head, second, third = (node["node_id"] for node in three_nodes.nodes)
    out = _driver(
        three_nodes,
        """
pid, node = ember.get(shout.remote("marker-on-the-second-node"))
out = {"pid": pid, "node": node}
groups = list_logs(node_id=node)
out["groups"] = groups
out["workers_glob"] = list_logs(node_id=node, glob_filter="worker-*")
out["by_pid"] = "".join(get_log(node_id=node, pid=pid))
name = next(n for n in groups["worker"] if "marker-on-the-second-node" in "".join(get_log(node_id=node, filename=n)))
out["name"] = name
out["tail"] = "".join(get_log(node_id=node, filename=name, tail=1))
out["head_groups"] = list_logs()  # the head's node by default, as `ray logs`
out["third_groups"] = list_logs(node_id=THIRD)
errors = {}
for label, kwargs in {
    "dotdot": dict(node_id=node, filename="../x"),
    "absolute": dict(node_id=node, filename="/etc/passwd"),
    "other_node": dict(node_id=node, filename=out["head_groups"]["node_manager"][0]),
    "no_pid": dict(node_id=node, pid=1),
    "no_node": dict(node_id="ab" * 16, filename=name),
}.items():
    try:
        "".join(get_log(**kwargs))
        errors[label] = None
    except ValueError as error:
        errors[label] = str(error)
out["errors"] = errors
print(json.dumps(out))
""".replace("THIRD", repr(third)),
    )
    assert out["node"] == second
    assert "marker-on-the-second-node" in out["by_pid"]
    assert out["tail"] == "marker-on-the-second-node\n"  # the task's print is the worker's last line
    assert out["name"] in out["groups"]["worker"] and out["name"].startswith("worker-")
    assert out["groups"]["node_manager"] == [f"cluster-{three_nodes.nodes[1]['pid']}.log"]
    assert out["workers_glob"] == {"worker": out["groups"]["worker"]}
    # Each node lists only its own files: the third shares the head's session directory.
    head_files = set(sum(out["head_groups"].values(), []))
    third_files = set(sum(out["third_groups"].values(), []))
    assert head_files and third_files and not head_files & third_files
    assert out["third_groups"]["node_manager"] == [f"cluster-{three_nodes.nodes[2]['pid']}.log"]
    assert f"cluster-{three_nodes.nodes[0]['pid']}.log" in head_files
    for label, error in out["errors"].items():
        assert error, label
    assert "no log file '../x'" in out["errors"]["dotdot"]
    assert "no log file" in out["errors"]["other_node"]
    assert "pid 1" in out["errors"]["no_pid"]
    assert "No node" in out["errors"]["no_node"]


def test_a_sigkilled_workers_log_stays_listed(three_nodes):
    out = _driver(
        three_nodes,
        """
actor = Doomed.remote()
pid = ember.get(actor.pid.remote())
node = ember.get_runtime_context().get_node_id()
actor_node = [a for a in ember.util.state.list_actors() if a.pid == pid][0].node_id
by_actor = "".join(get_log(actor_id=actor._actor_id.hex()))
os.kill(pid, signal.SIGKILL)
deadline = time.monotonic() + 30
while [a for a in ember.util.state.list_actors() if a.pid == pid and a.state != "DEAD"]:
    assert time.monotonic() < deadline, "the actor did not die"
    time.sleep(0.05)
after = list_logs(node_id=actor_node)
text = "".join(get_log(node_id=actor_node, pid=pid))
print(json.dumps({"after": after, "text": text, "by_actor": by_actor, "node": actor_node}))
""",
    )
    assert out["node"] == three_nodes.nodes[1]["node_id"]
    assert "doomed actor says goodbye" in out["by_actor"]
    assert "doomed actor says goodbye" in out["text"]  # read after the worker was SIGKILLed
    assert out["after"]["worker"]


def test_the_dashboard_reads_every_nodes_logs(three_nodes):
    url = three_nodes.nodes[0]["dashboard_url"]
    second = three_nodes.nodes[1]["node_id"]
    out = _driver(
        three_nodes,
        """
pid, node = ember.get(shout.remote("dashboard-marker"))
print(json.dumps({"pid": pid}))
""",
    )
    headers = {"Authorization": f"Bearer {three_nodes.token}"}

    def get(path, status=200):
        reply = httpx.get(f"{url}{path}", timeout=30, headers=headers)
        assert reply.status_code == status, (path, reply.text[:300])
        return reply

    every = get("/api/logs").json()
    assert {n["node_id"] for n in every["nodes"]} == {n["node_id"] for n in three_nodes.nodes}
    files = get(f"/api/logs?node={second}").json()["files"]
    mine = [f for f in files if f["pid"] == out["pid"]]
    assert mine and mine[0]["kind"] == "worker" and mine[0]["alive"]
    name = mine[0]["name"]
    assert "dashboard-marker" in get(f"/api/logs/{name}?node={second}").text
    assert get(f"/api/logs/{name}?node={second}&tail=17").text == "dashboard-marker\n"
    get(f"/api/logs/..%2Fx?node={second}", 404)  # no route takes a slash in the name
    assert "No log file 'x.log' on node" in get(f"/api/logs/x.log?node={second}", 404).json()["error"]
    head_file = f"cluster-{three_nodes.nodes[0]['pid']}.log"
    get(f"/api/logs/{head_file}?node={second}", 404)  # the head's node's file, asked of the second node
    get(f"/api/logs?node={'ab' * 16}", 404)
    wait_for(lambda: "dashboard-marker" in get(f"/api/view/logs?node={second}&file={name}").json()["html"])
    view = get("/api/view/logs").json()["html"]
    assert f"data-node='{second}'" in view and f"logs?node={second}&amp;file={name}" in view


def test_whole_files_tails_and_follow_read_in_parts(three_nodes):
    # Over 2 MiB of output: get_log pages through the node's 1 MiB answers, from the start and from the end.
    out = _driver(
        three_nodes,
        """
@ember.remote(resources={"second": 0.5})
class Talker:
    def say(self, text):
        print(text, flush=True)
        return os.getpid()
    def lots(self, lines):
        for i in range(lines):
            print(f"line {i:06d} " + "x" * 1000)
        return os.getpid()

talker = Talker.remote()
node = [n["NodeID"] for n in ember.nodes() if "second" in n["Resources"]][0]
pid = ember.get(talker.lots.remote(2200))
whole = "".join(get_log(node_id=node, pid=pid))
last = "".join(get_log(node_id=node, pid=pid, tail=3)).splitlines()
none = "".join(get_log(node_id=node, pid=pid, tail=0))
raw = b"".join(get_log(node_id=node, pid=pid, tail=1, encoding=None))
ember.get(talker.say.remote("before following"))
follow = get_log(node_id=node, pid=pid, tail=1, follow=True, _interval=0.05)
first = next(follow)  # the generator has started: what comes from now on is followed
talker.say.remote("followed line")
seen = ""
while "followed line" not in seen:
    seen += next(follow)
follow.close()
lines = [line for line in whole.splitlines() if line.startswith("line ")]
print(json.dumps({"count": len(lines), "ordered": lines == sorted(lines), "size": len(whole), "last": last,
                  "none": none, "raw": raw.decode(), "first": first, "seen": seen}))
""",
    )
    assert out["count"] == 2200 and out["ordered"] and out["size"] > 2 * 2**20
    assert [line[:11] for line in out["last"]] == ["line 002197", "line 002198", "line 002199"]
    assert out["none"] == "" and out["raw"].startswith("line 002199 ")
    assert out["first"] == "before following\n" and out["seen"] == "followed line\n"
