"""The typed message schemas (runtime/messages.py): valid headers decode to their op's Struct,
malformed ones raise BadMessage and nothing else, whatever the bytes."""

import os
import subprocess
import sys

import msgpack
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember.runtime import messages, protocol
from ember.runtime.messages import BadMessage, decode_header

NODE = b"n" * 16
OTHER_NODE = b"m" * 16
CLIENT = b"c" * 16
ACTOR = b"a" * 16
JOB = (1).to_bytes(4, "little")
TASK = b"t" * 14
OID = TASK + (1).to_bytes(2, "little")
PG = b"p" * 18
RID = b"r" * 8
ADDRESS = "127.0.0.1:5555"
OWNER = "127.0.0.1:5556#0123456789ab.0123456789ab"
TASK_FIELDS = {"tname": "f", "job": JOB, "owner": OWNER, "owner_id": CLIENT, "owner_node": NODE, "nbuf": 0}
ACTOR_OPTIONS = {
    "class_name": "Counter",
    "name": None,
    "namespace": "ns",
    "detached": False,
    "get_if_exists": False,
    "max_restarts": -1,
    "max_task_retries": 0,
    "max_concurrency": None,
    "concurrency_groups": {"io": 2},
    "resources": {"CPU": 1},
    "running": {},
    "strategy": None,
    "pg": None,
    "renv": {"env_vars": {"A": "1"}, "working_dir": "ab" * 32, "pip": ["termcolor==2.4.0"]},
    "owner_actor": None,
    "meta": {"incr": 1, "stream": "streaming", "retry": {"num_returns": 2, "retry_exceptions": b"pickled"}},
    "cid": b"cls:" + b"h" * 20,
    "refs": [[0, "r", OID, OWNER]],
}
STORE = {"capacity": 100, "used": 10, "num_objects": 1, "spilled": 0, "num_spilled": 0, "reserved": 0}

# One header per op, shaped as the real senders build it (service that receives it, header).
SAMPLES = {
    "register_node": (
        "head",
        {"rid": b"reg", "node_id": NODE, "address": ADDRESS, "resources": {"CPU": 4, "GPU": 0.5}},
    ),
    "unregister_node": ("head", {"rid": b"bye", "node_id": NODE}),
    "node_stats": (
        "head",
        {
            "node_id": NODE,
            "available": {"CPU": -1.0},
            "total": {"CPU": 4.0},
            "store": {**STORE, "spilling": 0, "restoring": 1, "pinned": 2, "largest": [[OID, 10]]},
            "demand": [{"CPU": 1.0}],
            "gpus": [{"gpu_id": 0, "holder": "f (pid 12)", "share": 0.5, "actor": False}],
        },
    ),
    "register_job": ("head", {"rid": RID, "pid": 1234, "namespace": None, "entrypoint": "python x.py"}),
    "job_finished": ("head", {"job_id": JOB}),
    "kv_put": ("head", {"rid": RID, "key": b"fn:abc", "overwrite": False}),
    "kv_get": ("head", {"rid": RID, "key": b"job:" + JOB}),
    "kv_del": ("head", {"rid": RID, "key": b"x"}),
    "kv_keys": ("head", {"rid": RID, "prefix": b"fn:"}),
    "get_nodes": ("head", {"rid": b"status"}),
    "state_query": ("head", {"rid": RID, "kind": "tasks"}),
    "table_sizes": ("node_manager", {"rid": RID}),
    "create_actor": (
        "head",
        {"rid": RID, "actor_id": ACTOR, "job_id": JOB, "spec": {**TASK_FIELDS, **ACTOR_OPTIONS, "rid": TASK}},
    ),
    "subscribe_actor": ("head", {"rid": RID, "actor_id": ACTOR}),
    "get_named_actor": ("head", {"rid": RID, "name": "a", "namespace": "ns"}),
    "list_named_actors": ("head", {"rid": RID, "all_namespaces": True}),
    "kill_actor": ("head", {"rid": RID, "actor_id": ACTOR, "no_restart": True, "cause": "bye"}),
    "actor_handle_released": ("head", {"actor_id": ACTOR}),
    "worker_died": ("head", {"wid": CLIENT}),
    "logs": ("head", {"batches": {JOB: [["stdout", "f", 12, "hello", None]]}}),
    "task_events": ("head", {}),
    "shutdown": ("head", {"rid": RID}),
    "create_placement_group": (
        "head",
        {
            "rid": RID,
            "pg_id": PG,
            "bundles": [{"CPU": 1}],
            "strategy": "PACK",
            "name": "",
            "namespace": "ns",
            "job_id": JOB,
            "detached": False,
            "soft_target": None,
        },
    ),
    "remove_placement_group": ("head", {"rid": RID, "pg_id": PG}),
    "wait_placement_group": ("head", {"rid": RID, "pg_id": PG}),
    "placement_group_table": ("head", {"rid": RID, "name": "g", "namespace": "ns"}),
    "register_client": (
        "node_manager",
        {"rid": RID, "addr": OWNER, "client_id": CLIENT, "pid": 99, "kind": "driver", "job": JOB},
    ),
    "unregister_client": ("node_manager", {"rid": RID, "client_id": CLIENT}),
    "request_lease": (
        "node_manager",
        {"rid": RID, "res": {"CPU": 1}, "run": {"CPU": 1}, "actor": False, "what": "f", "strategy": "SPREAD"},
    ),
    "cancel_lease_request": ("node_manager", {"rid": RID}),
    "return_lease": ("node_manager", {"wid": CLIENT}),
    "worker_ready": ("node_manager", {"rid": RID, "wid": CLIENT, "pid": 7, "addr": ADDRESS, "caddr": OWNER}),
    "worker_blocked": ("node_manager", {"wid": CLIENT}),
    "worker_unblocked": ("node_manager", {"wid": CLIENT}),
    "kill_worker": ("node_manager", {"wid": CLIENT}),
    "exit_refused": ("node_manager", {"wid": CLIENT}),
    "store_create": ("node_manager", {"rid": RID, "oid": OID, "size": 1 << 20}),
    "store_sealed": ("node_manager", {"oid": OID, "size": 1 << 20, "owner": CLIENT, "owner_node": NODE}),
    "store_restore": ("node_manager", {"rid": RID, "oid": OID}),
    "store_delete": ("node_manager", {"oids": [OID]}),
    "store_touch": ("node_manager", {"oids": [OID, OID], "unpin": [OID]}),
    "worker_logs": ("node_manager", {"batches": {b"": [["stderr", "worker", 12, "x", "cell-1"]]}}),
    "cluster_view": (
        "node_manager",
        {
            "nodes": [[NODE, ADDRESS, {"CPU": 4}, {"CPU": 0.5}, True]],
            "removed_groups": ["ab" * 18],
            "removed_full": True,
        },
    ),
    "node_dead": ("node_manager", {"node_id": NODE}),
    "store_pull": ("node_manager", {"rid": RID, "oid": OID, "from": OTHER_NODE}),
    "pull_object": ("node_manager", {"oid": OID, "chunks": [0, 1, 2, 3]}),
    "prepare_bundles": ("node_manager", {"rid": RID, "pg_id": PG, "bundles": [[0, {"CPU": 1}]]}),
    "commit_bundles": ("node_manager", {"pg_id": PG, "indexes": [0, 1]}),
    "cancel_bundles": ("node_manager", {"pg_id": PG, "indexes": [1]}),
    "log_files": ("node_manager", {"rid": RID}),
    "log_read": ("node_manager", {"rid": RID, "name": "worker-1.log", "pid": 12, "tail": 4096}),
    "object_chunk": ("node_manager_peer", {"oid": OID, "index": 0, "offset": 0, "size": 10}),
    "execute_task": (
        "worker",
        {
            **TASK_FIELDS,
            "rid": TASK,
            "fid": b"fn:" + b"h" * 20,
            "nret": 1,
            "max_calls": 0,
            "refs": [[0, "v", 1, 0], ["x", "s", OID, NODE], [2, "r", OID, OWNER]],
            "res": {"CPU": 1.0},
            "gpus": [],
            "pg": ["ab" * 18, -1, True],
        },
    ),
    "actor_call": (
        "worker",
        {**TASK_FIELDS, "rid": TASK, "method": "incr", "nret": "streaming", "refs": [], "cgroup": "io"},
    ),
    "create_actor_instance": (
        "worker",
        {
            **TASK_FIELDS,
            **ACTOR_OPTIONS,
            "rid": ACTOR,
            "actor_id": ACTOR,
            "gpus": [0],
            "assigned": {},
            "restarted": True,
        },
    ),
    "task_result": ("client", {"rid": TASK, "rets": [["v", 0, 5, []], ["s", 200000, NODE, [[OID, OWNER]]]]}),
    "stream_item": ("client", {"rid": TASK, "idx": 0, "ret": ["v", 1, 10, []]}),
    "lease_granted": (
        "client",
        {
            "rid": RID,
            "wid": CLIENT,
            "addr": ADDRESS,
            "caddr": OWNER,
            "pid": 5,
            "gpus": [0, 1],
            "res": {"CPU": 1.0},
            "node_id": NODE,
        },
    ),
    "lease_infeasible": ("client", {"rid": RID, "res": {"GPU": 8.0}, "total": {"CPU": 4}}),
    "leased_worker_died": ("client", {"wid": CLIENT}),
    "owner_died": ("client", {"addr": OWNER}),
    "actor_update": ("client", {"actor": {"actor_id": ACTOR, "state": "ALIVE", "address": ADDRESS, "pid": 3}}),
    "exit_if_idle": ("client", {}),
    "get_object": ("owner", {"rid": RID, "oid": OID, "to": OWNER, "node": NODE}),
    "add_borrower": ("owner", {"rid": RID, "oid": OID, "addr": OWNER}),
    "remove_borrower": ("owner", {"oid": OID, "addr": OWNER}),
    "cancel_task": ("owner", {"task_id": TASK, "recursive": False}),
    "reply": ("client", {"rid": RID, "loc": ["s", NODE], "found": True, "existing": None}),
    "error": ("client", {"rid": RID, "error": "no such actor", "etype": "ValueError"}),
}


def pack(op, fields) -> bytes:
    return msgpack.packb({"op": op, **fields} if op is not None else fields, use_bin_type=True)


def test_every_op_has_one_schema_and_a_sample():
    ops = {v for name, v in vars(protocol).items() if name.isupper() and not name.startswith("CHECK_")}
    assert set(messages.BY_OP) == ops
    assert len(messages.BY_OP) == len(messages.ALL_MESSAGES)  # no op defined twice
    assert set(SAMPLES) == ops


@pytest.mark.parametrize("op", sorted(SAMPLES))
def test_valid_headers_decode_to_their_struct(op):
    service, fields = SAMPLES[op]
    message = decode_header(service, pack(op, fields))
    assert type(message) is messages.BY_OP[op]
    assert message.rid == fields.get("rid")
    # What a Struct encodes decodes to the same Struct: handlers may forward what they got.
    assert decode_header(service, msgspec.msgpack.encode(message)) == message


def test_fields_come_out_typed():
    node = decode_header("head", pack("register_node", SAMPLES["register_node"][1]))
    assert node.node_id == NODE and node.address == ADDRESS and node.resources == {"CPU": 4, "GPU": 0.5}
    assert node.host == ""  # optional, with its default
    pull = decode_header("node_manager", pack("store_pull", SAMPLES["store_pull"][1]))
    assert pull.from_ == OTHER_NODE
    task = decode_header("worker", pack("execute_task", SAMPLES["execute_task"][1]))
    assert [ref.kind for ref in task.refs] == ["v", "s", "r"] and task.pg.index == -1 and task.pg.capture
    assert task.argobj is None and task.max_calls == 0
    dynamic = decode_header("worker", pack("execute_task", {**SAMPLES["execute_task"][1], "nret": "dynamic"}))
    assert dynamic.nret == "dynamic"
    call = decode_header("worker", pack("actor_call", SAMPLES["actor_call"][1]))
    assert call.cgroup == "io"
    result = decode_header("client", pack("task_result", SAMPLES["task_result"][1]))
    assert result.rets[1].second == NODE and result.rets[1].refs[0].owner == OWNER


def mutated(op, **changes):
    service, fields = SAMPLES[op]
    fields = dict(fields)
    for name, value in changes.items():
        if value is DROP:
            fields.pop(name)
        else:
            fields[name] = value
    return service, pack(op, fields)


DROP = object()
DEEP = b"\x82\xa2op\xa8get_nodes\xa1x" + b"\x91" * 100_000 + b"\xc0"

BAD = {
    # The issue's examples.
    "int node id": mutated("register_node", node_id=7),
    "address without port": mutated("register_node", address="127.0.0.1"),
    "address with port 0": mutated("register_node", address="127.0.0.1:0"),
    "lease asking for negative CPUs": mutated("request_lease", res={"CPU": -1}),
    "lease asking for NaN": mutated("request_lease", res={"CPU": float("nan")}),
    "lease asking for infinity": mutated("request_lease", run={"CPU": float("inf")}),
    "negative store reservation": mutated("store_create", size=-1),
    "max_calls on an actor call": mutated("actor_call", max_calls=1),
    "actor creation with a nil id": mutated("create_actor", actor_id=b""),
    # Ids of the wrong length, wrong types, missing fields.
    "short object id": mutated("store_create", oid=b"x" * 15),
    "long task id": mutated("cancel_task", task_id=b"x" * 20),
    "node id as str": mutated("node_dead", node_id=NODE.hex()),
    "bool as str": mutated("kill_actor", no_restart="yes"),
    "resources as a list": mutated("register_node", resources=[["CPU", 4]]),
    "resource name not a str": mutated("register_node", resources={4: 4}),
    "missing field": mutated("register_node", address=DROP),
    "missing rid on a lease request": mutated("request_lease", rid=DROP),
    "empty rid": mutated("get_object", rid=b""),
    "huge rid": mutated("get_object", rid=b"r" * 1000),
    "unknown field": mutated("worker_died", surprise=1),
    "wrong literal": mutated("register_client", kind="admin"),
    "bad strategy": mutated("create_placement_group", strategy="SOMETIMES"),
    "negative pid": mutated("worker_ready", pid=-5),
    "bad stored-argument entry": mutated("execute_task", refs=[[0, "s", OID, OWNER]]),
    "bad borrowed-argument owner": mutated("execute_task", refs=[[0, "r", OID, "nowhere"]]),
    "bad return entry": mutated("task_result", rets=[["v", 0, NODE, []]]),
    "bad location": mutated("reply", loc=["v", NODE]),
    "negative nret": mutated("execute_task", nret=-1),
    "unknown nret": mutated("execute_task", nret="sometimes"),
    "empty concurrency group": mutated("actor_call", cgroup=""),
    "concurrency group of zero": mutated("create_actor_instance", concurrency_groups={"io": 0}),
    "unknown method option": mutated("create_actor_instance", meta={"f": {"num_returns": 1, "colour": "red"}}),
    "negative actor restarts below -1": mutated("create_actor_instance", max_restarts=-2),
    "nested spec with an op": mutated("create_actor", spec={**SAMPLES["create_actor"][1]["spec"], "op": "x"}),
    # Not a message at all.
    "unknown op": ("head", pack("make_coffee", {"rid": RID})),
    "op of another service": ("worker", pack("register_node", SAMPLES["register_node"][1])),
    "op not a str": ("head", pack(None, {"op": 5})),
    "no op": ("head", pack(None, {"rid": RID})),
    "non-map header": ("head", msgpack.packb([1, 2, 3])),
    "a bare int": ("owner", msgpack.packb(5)),
    "garbage bytes": ("node_manager", b"\xc1\xff\x00garbage"),
    "truncated": ("head", pack("register_node", SAMPLES["register_node"][1])[:-3]),
    "empty frame": ("client", b""),
    "huge nested structure": ("head", DEEP),
    "huge nested value in a typed field": mutated("logs", batches={JOB: [[[[[[[[]]]]]]]]}),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_headers_raise_bad_message(name):
    service, frame = BAD[name]
    with pytest.raises(BadMessage) as caught:
        decode_header(service, frame)
    assert caught.value.reason and str(caught.value).startswith("bad ")


def test_bad_message_names_op_and_request():
    """So a service can answer the request with a typed error and log what it refused."""
    service, frame = BAD["int node id"]
    with pytest.raises(BadMessage) as caught:
        decode_header(service, frame)
    assert caught.value.op == "register_node" and caught.value.rid == b"reg" and "node_id" in caught.value.reason
    with pytest.raises(BadMessage) as caught:
        decode_header("worker", pack("register_node", SAMPLES["register_node"][1]))
    assert "does not accept 'register_node'" in caught.value.reason
    with pytest.raises(BadMessage) as caught:
        decode_header("head", b"\xc1")
    assert caught.value.op is None and caught.value.rid is None
    assert isinstance(caught.value, ValueError)  # callers that answer ValueErrors answer these too


def test_not_bytes_is_a_bad_message_and_unknown_service_a_key_error():
    with pytest.raises(BadMessage):
        decode_header("head", 12345)
    with pytest.raises(KeyError):
        decode_header("dashboard", pack("get_nodes", {}))


# --- property tests ---------------------------------------------------------------------------------

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.sampled_from([NODE, TASK, OID, PG, JOB, ADDRESS, OWNER, "streaming", "v", "s", "r", *SAMPLES]),
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=12), st.sampled_from(["op", "rid", "node_id"])), inner, max_size=5),
    ),
    max_leaves=30,
)
services = st.sampled_from(sorted(messages.SERVICES))


def decodes_or_refuses(service: str, frame: bytes) -> None:
    try:
        message = decode_header(service, frame)
    except BadMessage:
        return
    assert isinstance(message, messages.SERVICES[service])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(service=services, value=values)
def test_random_values_decode_or_raise_bad_message(service, value):
    decodes_or_refuses(service, msgpack.packb(value, use_bin_type=True))


@settings(max_examples=300, deadline=None)
@given(service=services, frame=st.binary(max_size=200))
def test_random_bytes_decode_or_raise_bad_message(service, frame):
    decodes_or_refuses(service, frame)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    op=st.sampled_from(sorted(SAMPLES)),
    edits=st.lists(
        st.tuples(st.sampled_from(["drop", "set", "add", "op"]), st.text(max_size=10), values), min_size=1, max_size=3
    ),
    other_service=services,
)
def test_mutated_valid_headers_decode_or_raise_bad_message(op, edits, other_service):
    service, fields = SAMPLES[op]
    header = {"op": op, **fields}
    for kind, name, value in edits:
        keys = sorted(header)
        if kind == "drop" and keys:
            header.pop(keys[len(name) % len(keys)])
        elif kind == "set" and keys:
            header[keys[len(name) % len(keys)]] = value
        elif kind == "add":
            header[name] = value
        elif kind == "op":
            ops = sorted(SAMPLES)
            header["op"] = value if isinstance(value, str) and len(name) % 2 else ops[len(name) % len(ops)]
    frame = msgpack.packb(header, use_bin_type=True)
    decodes_or_refuses(service, frame)
    decodes_or_refuses(other_service, frame)


# --- the send-time check ----------------------------------------------------------------------------


def test_encode_is_bound_once_at_import():
    expected = protocol._encode_checked if protocol.CHECK_MESSAGES else protocol._encode
    assert protocol.encode is expected


def test_send_time_check_refuses_and_logs_what_no_schema_accepts(tmp_path):
    log = tmp_path / "misses.log"
    script = (
        "from ember.runtime import protocol\n"
        "protocol.encode({'op': 'get_nodes', 'rid': b'1'})\n"  # a valid one goes out
        "try:\n"
        "    protocol.encode({'op': 'register_node', 'node_id': 7, 'address': 'h:1', 'resources': {}})\n"
        "except ValueError as error:\n"
        "    print(type(error).__name__, error.op)\n"
    )
    env = {**os.environ, "EMBER_CHECK_MESSAGES": "1", "EMBER_CHECK_MESSAGES_LOG": str(log)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "BadMessage register_node", result.stderr
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and "register_node" in lines[0] and "node_id" in lines[0]


def test_a_header_past_the_size_limit_is_refused_before_it_is_decoded(monkeypatch):
    header = msgpack.packb({"op": "kv_get", "rid": b"r" * 8, "key": b"k" * 200})
    assert isinstance(messages.decode_header("head", header), messages.KvGet)
    monkeypatch.setattr(messages, "MAX_HEADER_BYTES", 100)
    with pytest.raises(messages.BadMessage, match="a header of 2\\d\\d bytes"):
        messages.decode_header("head", header)
