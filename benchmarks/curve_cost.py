"""What CurveZMQ costs per message, apart from Ember: a DEALER/ROUTER ping-pong over loopback TCP,
plain and with Curve, at three message sizes (best of three runs each).

Ember's sockets all speak Curve (see "Authentication" in docs/architecture.md); this isolates the
part of the microbenchmark rows' cost that is encryption, from the part that is the shared machine.

    python benchmarks/curve_cost.py
"""

import time

import zmq


def round_trips_per_s(curve: bool, count: int, size: int) -> float:
    ctx = zmq.Context()
    server, client = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    if curve:
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        server.curve_server = True
        server.curve_secretkey = server_secret
        client.curve_serverkey = server_public
        client.curve_publickey, client.curve_secretkey = client_public, client_secret
    port = server.bind_to_random_port("tcp://127.0.0.1")
    client.connect(f"tcp://127.0.0.1:{port}")
    message = b"x" * size

    def one():
        client.send(message)
        identity, body = server.recv_multipart()
        server.send_multipart([identity, body])
        client.recv()

    one()  # the handshake happens here, outside the timing
    start = time.perf_counter()
    for _ in range(count):
        one()
    elapsed = time.perf_counter() - start
    ctx.destroy(0)
    return count / elapsed


def main() -> None:
    print(f"{'message':>10} {'plain (round trips/s)':>22} {'curve':>10} {'curve/plain':>12}")
    for size, count in ((100, 20000), (10_000, 20000), (1_000_000, 300)):
        best = {curve: max(round_trips_per_s(curve, count, size) for _ in range(3)) for curve in (False, True)}
        print(f"{size:>10,} {best[False]:>22,.0f} {best[True]:>10,.0f} {best[True] / best[False]:>12.2f}")


if __name__ == "__main__":
    main()
