"""The `ember` command with real processes: start a head, join a node, status, drivers, stop."""

import argparse
import glob
import json
import os
import subprocess
import sys

import psutil
import pytest
from conftest import run_driver

from ember import cli
from ember.runtime import launcher, runtime_dir


@pytest.fixture
def started_dir(tmp_path, monkeypatch):
    # Each test run records what it starts in its own directory, so `ember stop` here can never stop
    # a cluster that someone else started on this machine.
    directory = str(tmp_path / "started")
    monkeypatch.setenv("EMBER_STARTED_DIR", directory)
    yield directory
    ember_cli("stop", check=False)


def ember_cli(*args, check=True, timeout=60) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "ember.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )
    if check and result.returncode != 0:
        raise AssertionError(f"ember {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def recorded() -> list:
    return launcher.list_started()


def test_cli_round_trip(started_dir):
    head = ember_cli("start", "--head", "--port", "0", "--num-cpus", "1", "--resources", '{"node_a": 1}')
    entries = recorded()
    assert [e["kind"] for e in entries] == ["head"]
    address = entries[0]["head"]
    assert f'ember.init(address="{address}")' in head.stdout
    assert f"ember start --address {address}" in head.stdout
    assert os.path.exists(f"{runtime_dir.cluster_dir()}/{entries[0]['pid']}")

    ember_cli("start", "--address", address, "--num-cpus", "1", "--resources", '{"node_b": 1}')
    entries = {e["kind"]: e for e in recorded()}
    assert set(entries) == {"head", "node"}
    # Started detached: `ember start` has exited, the processes live on in their own sessions.
    for entry in entries.values():
        assert os.getsid(entry["pid"]) == entry["pid"]

    status = ember_cli("status", "--address", address).stdout
    assert "Nodes (2 alive, 0 dead)" in status
    assert entries["head"]["node_id"] in status and entries["node"]["node_id"] in status
    assert "node_a" in status and "node_b" in status and "Object store" in status

    node_ids = {"node_a": entries["head"]["node_id"], "node_b": entries["node"]["node_id"]}
    driver = """
        import ember
        ember.init(address={address!r})

        @ember.remote(num_cpus=0)
        def where():
            return ember.get_runtime_context().get_node_id()

        print(len(ember.nodes()), ember.cluster_resources()["CPU"])
        print(ember.get(where.options(resources={{"node_a": 1}}).remote(), timeout=30))
        print(ember.get(where.options(resources={{"node_b": 1}}).remote(), timeout=30))
    """
    for how in ("auto", address):
        lines = run_driver(driver.format(address=how), env={"EMBER_ADDRESS": ""}).stdout.split()
        assert lines == ["2", "2.0", node_ids["node_a"], node_ids["node_b"]]

    pids = [e["pid"] for e in recorded()]
    prefixes = [e["store_prefix"] for e in recorded()]
    stop = ember_cli("stop")
    assert "Stopped 2 Ember processes" in stop.stdout
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)
    assert not [path for prefix in prefixes for path in glob.glob(f"/dev/shm/{prefix}-*")]
    assert recorded() == []
    assert not os.path.exists(f"{runtime_dir.cluster_dir()}/{entries['head']['pid']}")
    assert "Nothing to stop" in ember_cli("stop").stdout
    # No head any more: status says so instead of hanging.
    assert ember_cli("status", "--address", address, check=False).returncode == 1


def test_stop_leaves_other_processes_alone(started_dir):
    # A process not started by `ember start` (here: a sleeping Python) is never touched by `ember stop`,
    # even when a stale record names a pid that was reused by another process.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        launcher.record_started(other.pid, "node", store_prefix="")
        entry = json.load(open(os.path.join(started_dir, str(other.pid))))
        entry["create_time"] -= 100  # as if the recorded process had died and its pid been reused
        json.dump(entry, open(os.path.join(started_dir, str(other.pid)), "w"))
        ember_cli("stop")
        assert other.poll() is None
        assert recorded() == []
    finally:
        other.kill()
        other.wait()


def test_start_validation(started_dir):
    result = ember_cli("start", "--num-cpus", "1", check=False)
    assert result.returncode == 2 and "--head or --address" in result.stderr
    result = ember_cli("start", "--head", "--resources", "[1]", check=False)
    assert result.returncode == 2 and "JSON object" in result.stderr
    result = ember_cli("start", "--head", "--port", "0", "--resources", '{"CPU": 2}', check=False)
    assert result.returncode == 2 and "num_cpus" in result.stderr
    assert recorded() == []


def test_parse_autoscale():
    assert cli._parse_autoscale("max_workers=2,idle_timeout_s=1.5,worker_cpus=2") == {
        "max_workers": 2,
        "idle_timeout_s": 1.5,
        "worker_cpus": 2.0,
    }
    for bad in ("idle_timeout_s=3", "max_workers=two", "max_workers=2,color=red", "max_workers=-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli._parse_autoscale(bad)


def test_format_status_shows_demand_and_gpus():
    reply = {
        "nodes": [
            {
                "node_id": bytes.fromhex("ab" * 16),
                "address": "127.0.0.1:1234",
                "alive": True,
                "resources": {"CPU": 4.0, "GPU": 2.0},
                "available": {"CPU": 1.0, "GPU": 1.5},
                "demand": [{"CPU": 1.0}, {"CPU": 1.0}],
                "store": {"used": 2**20, "capacity": 2**30, "num_objects": 3, "spilled": 0},
                "gpus": [{"gpu_id": 0, "holder": "task f", "share": 0.5}],
            },
            {"node_id": bytes.fromhex("cd" * 16), "address": "127.0.0.1:5678", "alive": False, "resources": {}},
        ],
        "pending_bundles": [{"GPU": 1.0}],
        "autoscaler": {
            "max_workers": 2,
            "idle_timeout_s": 5.0,
            "worker_shape": {"CPU": 1.0, "memory": 2.0**30},
            "launched": [["ef" * 16, "launching"]],
            "infeasible": [{"GPU": 4.0}],
        },
    }
    text = cli.format_status("127.0.0.1:6379", reply)
    assert "Nodes (1 alive, 1 dead)" in text
    assert "3 / 4 CPU" in text and "0.5 / 2 GPU" in text
    assert '{"CPU": 1.0}: 2 pending' in text and "(placement group)" in text
    assert "1.00 MiB / 1.00 GiB in 3 objects" in text
    assert "GPU 0  task f  share 0.5" in text
    assert 'Autoscaler: 1 of at most 2 worker nodes of {"CPU": 1.0}' in text
    assert f"{'ef' * 16}  launching" in text and 'infeasible (fits no node and no worker node): {"GPU": 4.0}' in text


def _network_address():
    """A non-loopback IPv4 address of this machine, if it has one."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == 2 and not address.address.startswith("127."):
                return address.address
    return None


@pytest.mark.skipif(_network_address() is None, reason="this machine has no network address")
def test_a_head_on_a_network_address_needs_its_token(started_dir, monkeypatch):
    monkeypatch.delenv("EMBER_CLUSTER_TOKEN", raising=False)
    host = _network_address()
    head = ember_cli("start", "--head", "--port", "0", "--num-cpus", "1", "--node-ip-address", host)
    token = head.stdout.split("EMBER_CLUSTER_TOKEN=")[1].split()[0]
    address = recorded()[0]["head"]
    assert address.startswith(host)
    # Another machine's node joins with the token; without it `ember start --address` refuses.
    refused = ember_cli("start", "--address", address, "--node-ip-address", host, check=False)
    assert refused.returncode != 0 and "EMBER_CLUSTER_TOKEN" in refused.stderr
    monkeypatch.setenv("EMBER_CLUSTER_TOKEN", token)
    ember_cli("start", "--address", address, "--node-ip-address", host, "--num-cpus", "1", "--resources", '{"b": 1}')
    monkeypatch.delenv("EMBER_CLUSTER_TOKEN")
    # A driver on this machine finds the cluster and its token through address="auto".
    driver = """
        import ember
        ember.init(address="auto")

        @ember.remote(resources={"b": 1})
        def where():
            return ember.get_runtime_context().get_node_id()

        print(len(ember.nodes()), ember.get(where.remote(), timeout=30) == ember.nodes()[1]["NodeID"])
    """
    assert run_driver(driver, env={"EMBER_ADDRESS": ""}).stdout.split() == ["2", "True"]
