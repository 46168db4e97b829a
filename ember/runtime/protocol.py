"""The wire format shared by every Ember process.

A message is a list of ZeroMQ frames::

    [msgpack header] [payload frame] [payload frame] ...

The header is a msgpack map with at least ``op`` (one of the names below) and usually ``rid``
(a request id that the reply echoes). Payload frames carry pickled values and out-of-band buffers
untouched, so large arrays are never copied into the header.

Every op is listed here once; each service maps the ops it accepts to a handler in a table.
"""

import os

import msgpack

# --- head -----------------------------------------------------------------------------------
REGISTER_NODE = "register_node"
UNREGISTER_NODE = "unregister_node"  # a node manager stopping cleanly: dead now, not after missed heartbeats
REGISTER_JOB = "register_job"
JOB_FINISHED = "job_finished"
KV_PUT = "kv_put"
KV_GET = "kv_get"
KV_DEL = "kv_del"
KV_KEYS = "kv_keys"
GET_NODES = "get_nodes"
CREATE_ACTOR = "create_actor"
SUBSCRIBE_ACTOR = "subscribe_actor"
ACTOR_UPDATE = "actor_update"  # push: head -> subscribed clients
GET_NAMED_ACTOR = "get_named_actor"
LIST_NAMED_ACTORS = "list_named_actors"
KILL_ACTOR = "kill_actor"
ACTOR_HANDLE_RELEASED = "actor_handle_released"
WORKER_DIED = "worker_died"  # node manager -> head
NODE_STATS = "node_stats"  # node manager -> head (resources, store usage)
LOGS = "logs"  # node manager -> head, republished on the event hub
TASK_EVENTS = "task_events"  # owner -> head: a msgpack list of task state changes, republished
SHUTDOWN = "shutdown"
CLUSTER_VIEW = "cluster_view"  # push: head -> node managers (every node's resources, availability, liveness)
NODE_DEAD = "node_dead"  # push: head -> a node manager it declared dead (it stops), node manager -> its clients
CREATE_PLACEMENT_GROUP = "create_placement_group"
REMOVE_PLACEMENT_GROUP = "remove_placement_group"
WAIT_PLACEMENT_GROUP = "wait_placement_group"  # replied when the group is created or removed
PLACEMENT_GROUP_TABLE = "placement_group_table"
STATE_QUERY = "state_query"  # the state API: the head's recent tasks, its actors or its jobs
TABLE_SIZES = "table_sizes"  # head or node manager: how many entries each table holds (soak tests, debugging)

# --- node manager ---------------------------------------------------------------------------
REGISTER_CLIENT = "register_client"
UNREGISTER_CLIENT = "unregister_client"  # a driver shut down: free what it owned
REQUEST_LEASE = "request_lease"
LEASE_GRANTED = "lease_granted"  # reply to REQUEST_LEASE
LEASE_INFEASIBLE = "lease_infeasible"  # push while a request stays queued
RETURN_LEASE = "return_lease"
CANCEL_LEASE_REQUEST = "cancel_lease_request"
LEASED_WORKER_DIED = "leased_worker_died"  # push: node manager -> lessee
OWNER_DIED = "owner_died"  # push: node manager -> every local client, when a client process dies
WORKER_READY = "worker_ready"  # worker -> node manager
WORKER_BLOCKED = "worker_blocked"
WORKER_UNBLOCKED = "worker_unblocked"
KILL_WORKER = "kill_worker"
EXIT_IF_IDLE = "exit_if_idle"  # push: node manager -> surplus idle worker
EXIT_REFUSED = "exit_refused"  # worker -> node manager: it still owns objects or holds leases
STORE_CREATE = "store_create"
STORE_SEALED = "store_sealed"
STORE_RESTORE = "store_restore"
STORE_DELETE = "store_delete"
STORE_TOUCH = "store_touch"
WORKER_LOGS = "worker_logs"
PREPARE_BUNDLES = "prepare_bundles"  # head -> node manager: reserve a placement group's bundles (phase 1)
COMMIT_BUNDLES = "commit_bundles"  # phase 2: the bundles' resources become usable
CANCEL_BUNDLES = "cancel_bundles"  # give reserved or committed bundles back (and stop what uses them)
PULL_OBJECT = "pull_object"  # node manager -> node manager: send me this object, in chunks
OBJECT_CHUNK = "object_chunk"  # reply to PULL_OBJECT, one per chunk
STORE_PULL = "store_pull"  # client -> its node manager: make a copy of an object held on another node
LOG_FILES = "log_files"  # anyone with the secret -> a node manager: its own log files (name, kind, pid, size)
LOG_READ = "log_read"  # a bounded part of one of those files (its end, or from an offset)

# --- worker task socket ---------------------------------------------------------------------
EXECUTE_TASK = "execute_task"
CREATE_ACTOR_INSTANCE = "create_actor_instance"
ACTOR_CALL = "actor_call"
TASK_RESULT = "task_result"  # reply to the three above
STREAM_ITEM = "stream_item"  # one yielded value of a streaming generator task

# --- any client's own server (owner service) ------------------------------------------------
GET_OBJECT = "get_object"
ADD_BORROWER = "add_borrower"
REMOVE_BORROWER = "remove_borrower"
CANCEL_TASK = "cancel_task"

REPLY = "reply"
ERROR = "error"

_pack = msgpack.Packer(use_bin_type=True).pack

# A debug switch for tests: every header is checked against its op's schema (runtime/messages.py)
# as it is sent, so a sender and the schemas cannot drift apart unnoticed. Read once, here: with it
# off, encode is the plain function and costs nothing more.
CHECK_MESSAGES = os.environ.get("EMBER_CHECK_MESSAGES", "") not in ("", "0")
CHECK_LOG = os.environ.get("EMBER_CHECK_MESSAGES_LOG")  # also append each miss to this file


def _encode(header: dict, frames=()) -> list:
    """Build the frame list for one message."""
    return [_pack(header), *frames]


def _encode_checked(header: dict, frames=()) -> list:
    """Build the frame list for one message, refusing a header its op's schema does not accept."""
    packed = _pack(header)
    try:
        _messages.check_packed(packed)
    except _messages.BadMessage as error:
        if CHECK_LOG:
            with open(CHECK_LOG, "a") as log:
                log.write(f"{os.getpid()} {error.op}: {error.reason} | {_shorten(header)}\n")
        raise
    return [packed, *frames]


def _shorten(header: dict) -> str:
    text = repr(header)
    return text if len(text) <= 2000 else text[:2000] + "..."


if CHECK_MESSAGES:
    from ember.runtime import messages as _messages

    encode = _encode_checked
else:
    encode = _encode


def decode(frames: list) -> tuple[dict, list]:
    """Split received frames into (header, payload frames)."""
    return msgpack.unpackb(frames[0], raw=False), frames[1:]
