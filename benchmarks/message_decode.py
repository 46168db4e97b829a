"""Decode cost of one header: msgspec's typed decode (runtime/messages.py) against today's untyped
``msgpack.unpackb``, for the headers on the task hot path.

Usage::

    PYTHONPATH=. python benchmarks/message_decode.py [--number 20000] [--repeat 7]

Prints microseconds per header, the best of ``--repeat`` runs of ``--number`` decodes each (the
minimum is the least disturbed by other load on the machine).
"""

import argparse
import os
import timeit

import msgpack

from ember.runtime.ids import new_id, new_task_id, return_object_id
from ember.runtime.messages import decode_header

OWNER = "127.0.0.1:40123#0123456789ab.0123456789ab"


def headers() -> dict:
    """Typical headers, shaped as TaskSubmitter and Worker build them."""
    task_id, node_id = new_task_id(), new_id(16)
    common = {
        "rid": task_id,
        "tname": "__main__.f",
        "job": (1).to_bytes(4, "little"),
        "owner": OWNER,
        "owner_id": new_id(16),
        "owner_node": node_id,
        "nbuf": 0,
        "refs": [[0, "s", return_object_id(new_task_id(), 1), node_id]],
    }
    return {
        "execute_task": (
            "worker",
            {
                "op": "execute_task",
                **common,
                "fid": b"fn:" + os.urandom(20),
                "nret": 1,
                "env": None,
                "max_calls": 0,
                "res": {"CPU": 1.0},
                "gpus": [],
            },
        ),
        "actor_call": ("worker", {"op": "actor_call", **common, "method": "incr", "nret": 1}),
        "task_result": ("client", {"op": "task_result", "rid": task_id, "rets": [["v", 0, 21, []]]}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print(f"{'header':<14} {'bytes':>6} {'msgpack.unpackb':>16} {'msgspec typed':>14}")
    for op, (service, header) in headers().items():
        frame = msgpack.packb(header, use_bin_type=True)
        decode_header(service, frame)  # it must be valid, or we would time the error path
        untyped = timeit.repeat(lambda f=frame: msgpack.unpackb(f, raw=False), number=args.number, repeat=args.repeat)
        typed = timeit.repeat(lambda f=frame, s=service: decode_header(s, f), number=args.number, repeat=args.repeat)
        per = 1e6 / args.number
        print(f"{op:<14} {len(frame):>6} {min(untyped) * per:>13.2f} us {min(typed) * per:>11.2f} us")


if __name__ == "__main__":
    main()
