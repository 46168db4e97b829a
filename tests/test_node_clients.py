"""Leases and store reservations belong to registered clients, and come back when a client goes
(issue 8 part 2). Each test runs a cluster of its own (2 CPUs, a 64 MiB store) in a driver process,
with peers that hold the cluster's secret talking straight to its node manager."""

import json

from conftest import run_driver

PRELUDE = """
import json, os, subprocess, sys, time
import ember
from ember import api
from ember.exceptions import ObjectStoreFullError
from ember.runtime import protocol, transport
from ember.runtime.ids import new_id

STORE = 64 << 20
ember.init(num_cpus=2, object_store_memory=STORE)
NM = api._context.address_info["node_manager"]
out = {}

def call(sock, header):
    sock.send_multipart(protocol.encode(header))
    if not sock.poll(20_000):
        return {"op": "timeout"}
    return protocol.decode(sock.recv_multipart())[0]

def wait_for(condition, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True

def table(name):
    sock = transport.connect_dealer(NM)
    sizes = call(sock, {"op": protocol.TABLE_SIZES, "rid": b"t"})
    sock.close(0)
    return sizes["sizes"][name]

def put_fails(size):
    try:
        ember.put(b"x" * size)
    except ObjectStoreFullError:
        return True
    return False

def lease(sock, rid):
    return call(sock, {"op": protocol.REQUEST_LEASE, "rid": rid, "res": {"CPU": 1}, "run": {"CPU": 1}})

def reserve_all(sock):
    # Everything the store has free: nothing else is in this cluster's store.
    return call(sock, {"op": protocol.STORE_CREATE, "rid": b"c", "oid": new_id(16), "size": STORE})
"""

TAIL = """
@ember.remote
def one():
    return 1

out["task"] = ember.get(one.remote(), timeout=60)
out["put"] = len(ember.get(ember.put(b"y" * (10 << 20))))
print("RESULT" + json.dumps(out))
"""


def result_of(code: str) -> dict:
    stdout = run_driver(code, timeout=180).stdout
    line = next(line for line in stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def test_an_unknown_peer_gets_no_lease_and_no_reservation():
    out = result_of(
        PRELUDE
        + """
stranger = transport.connect_dealer(NM)
first, second = lease(stranger, b"l1"), lease(stranger, b"l2")
create = reserve_all(stranger)
out["refused"] = [first["op"], second["op"], create["op"]]
out["why"] = create.get("error", "")
out["cpus"] = ember.available_resources().get("CPU")
out["reservations"] = table("reservations")
stranger.close(0)
"""
        + TAIL
    )
    assert out["refused"] == ["error", "error", "error"]
    assert "not a registered client" in out["why"]
    assert out["cpus"] == 2 and out["reservations"] == 0
    assert out["task"] == 1 and out["put"] == 10 << 20


def test_a_registered_peer_that_closes_its_socket_gives_everything_back():
    out = result_of(
        PRELUDE
        + """
peer = transport.connect_dealer(NM)
me = {"op": protocol.REGISTER_CLIENT, "rid": b"r", "client_id": new_id(16), "pid": os.getpid(), "kind": "driver"}
out["registered"] = call(peer, me)["op"]
out["leases"] = [lease(peer, b"l1")["op"], lease(peer, b"l2")["op"]]
out["reserved"] = "prefix" in reserve_all(peer)
out["all_cpus_taken"] = wait_for(lambda: ember.available_resources().get("CPU", 0) == 0)
out["put_failed_while_held"] = put_fails(10 << 20)
peer.close(0)  # the process lives on; its connection is what ends
out["cpus_back"] = wait_for(lambda: ember.available_resources().get("CPU") == 2)
out["tables_empty"] = wait_for(lambda: table("reservations") == 0 and table("client_leases") == 0)
"""
        + TAIL
    )
    assert out["registered"] == "reply" and out["leases"] == ["lease_granted", "lease_granted"]
    assert out["reserved"] and out["all_cpus_taken"] and out["put_failed_while_held"]
    assert out["cpus_back"] and out["tables_empty"]
    assert out["task"] == 1 and out["put"] == 10 << 20


def test_a_registered_peer_process_that_is_killed_gives_everything_back():
    out = result_of(
        PRELUDE
        + """
peer_code = '''
import os, sys, time
from ember.runtime import protocol, transport
from ember.runtime.ids import new_id
sock = transport.connect_dealer(sys.argv[1])
def call(header):
    sock.send_multipart(protocol.encode(header))
    assert sock.poll(20_000)
    return protocol.decode(sock.recv_multipart())[0]
me = {"op": protocol.REGISTER_CLIENT, "rid": b"r", "client_id": new_id(16), "pid": os.getpid(), "kind": "worker"}
call(me)
for rid in (b"l1", b"l2"):
    granted = call({"op": protocol.REQUEST_LEASE, "rid": rid, "res": {"CPU": 1}, "run": {"CPU": 1}})
    assert granted["op"] == "lease_granted"
assert "prefix" in call({"op": protocol.STORE_CREATE, "rid": b"c", "oid": new_id(16), "size": int(sys.argv[2])})
print("held", flush=True)
time.sleep(600)
'''
peer = subprocess.Popen([sys.executable, "-c", peer_code, NM, str(STORE)], stdout=subprocess.PIPE, text=True)
out["held"] = peer.stdout.readline().strip()
out["all_cpus_taken"] = wait_for(lambda: ember.available_resources().get("CPU", 0) == 0)
out["put_failed_while_held"] = put_fails(10 << 20)
peer.kill()
peer.wait()
out["cpus_back"] = wait_for(lambda: ember.available_resources().get("CPU") == 2)
out["tables_empty"] = wait_for(lambda: table("reservations") == 0 and table("client_leases") == 0)
"""
        + TAIL
    )
    assert out["held"] == "held" and out["all_cpus_taken"] and out["put_failed_while_held"]
    assert out["cpus_back"] and out["tables_empty"]
    assert out["task"] == 1 and out["put"] == 10 << 20
