"""Spilling under load: throughput, and how long the node manager's loop stops answering meanwhile.

Puts ``--total`` MiB of arrays of ``--size`` MiB into a store of ``--store`` MiB, so most of them
spill to disk, then reads every one back (restoring from disk) and checks it. A probe thread pings
the node manager the whole time (a request it answers at once); the longest wait for an answer is
how long its loop was stalled, which bounds the gap between its heartbeats to the head (sent from
the same loop every 0.5 s).

    PYTHONPATH=$PWD python benchmarks/store_io.py --total 4096 --size 128 --store 512
"""

import argparse
import json
import threading
import time

import numpy as np

import ember
from ember.runtime import protocol, transport
from ember.runtime.client.core_client import current_client


def probe(address: str, stop: threading.Event, worst: list) -> None:
    sock = transport.connect_dealer(address)
    try:
        n = 0
        while not stop.is_set():
            n += 1
            started = time.monotonic()
            # An object nobody has: answered at once by a loop that is not busy.
            sock.send_multipart(protocol.encode({"op": protocol.STORE_RESTORE, "rid": n, "oid": b"\0" * 20}))
            while True:
                if not sock.poll(60_000):
                    raise RuntimeError("the node manager did not answer for 60 s")
                if protocol.decode(sock.recv_multipart())[0].get("rid") == n:
                    break
            worst[0] = max(worst[0], time.monotonic() - started)
            time.sleep(0.01)
    finally:
        sock.close(0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--total", type=int, default=4096, help="MiB put in all")
    parser.add_argument("--size", type=int, default=128, help="MiB per array")
    parser.add_argument("--store", type=int, default=512, help="object_store_memory in MiB")
    args = parser.parse_args()
    ember.init(num_cpus=1, object_store_memory=args.store * 2**20)
    stop = threading.Event()
    worst = [0.0]
    thread = threading.Thread(target=probe, args=(current_client().node_manager_address, stop, worst))
    thread.start()
    try:
        count = args.total // args.size
        started = time.monotonic()
        refs = [ember.put(np.full(args.size * 2**20 // 8, float(i))) for i in range(count)]
        put_s = time.monotonic() - started
        put_stall = worst[0]
        started = time.monotonic()
        for i, ref in enumerate(refs):
            value = ember.get(ref)
            if value[0] != i or value[-1] != i:
                raise AssertionError(f"array {i} came back wrong")
            del value
        get_s = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
        ember.shutdown()
    mib = count * args.size
    print(
        json.dumps(
            {
                "MiB": mib,
                "put_MiB_per_s": round(mib / put_s),
                "get_MiB_per_s": round(mib / get_s),
                "longest_stall_during_puts_s": round(put_stall, 3),
                "longest_stall_s": round(worst[0], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
