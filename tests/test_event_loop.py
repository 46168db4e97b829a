"""service.EventLoop, the one poll loop a process's sockets, descriptors and cross-thread calls share
(the head and node manager run it, and a worker's task socket): real ZeroMQ sockets and pipes."""

import os
import threading

import pytest
import zmq

from ember.runtime.service import EventLoop


@pytest.fixture
def context():
    # A context of its own: the loop does not care how its sockets were secured.
    context = zmq.Context()
    yield context
    context.term()


def _pair(context, name: str):
    router = context.socket(zmq.ROUTER)
    router.bind(f"inproc://{name}")
    dealer = context.socket(zmq.DEALER)
    dealer.connect(f"inproc://{name}")
    return router, dealer


@pytest.fixture
def loop():
    loop = EventLoop()
    yield loop
    loop.close()


def test_call_soon_from_another_thread_wakes_a_loop_that_waits_for_ever(loop):
    done = []
    thread = threading.Thread(target=lambda: loop.call_soon(done.append, "from a thread"))
    thread.start()
    # No services, no limit: only the wake-up can end this poll.
    while not done:
        loop.run_once()
    thread.join()
    assert done == ["from a thread"]


def test_calls_run_in_order_and_calls_queued_by_calls_run_in_the_same_round(loop):
    order = []

    def first():
        order.append(1)
        loop.call_soon(order.append, 3)  # on the loop's own thread: no wake-up written, still run

    loop.call_soon(first)
    loop.call_soon(order.append, 2)
    loop.run_once(limit=5)
    assert order == [1, 2, 3]


def test_many_calls_cost_one_wake_up(loop):
    results = []
    for i in range(1000):
        loop.call_soon(results.append, i)
    assert os.read(loop._wake_r, 4096) == b"x"  # coalesced: one byte until the loop runs a round
    os.write(loop._wake_w, b"x")  # put it back for the loop to drain
    loop.run_once(limit=5)
    assert results == list(range(1000))
    loop.call_soon(results.append, "next")  # after the round, a new call writes a new wake-up
    assert os.read(loop._wake_r, 4096) == b"x"


def test_a_raising_call_does_not_stop_the_others(loop):
    results = []
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(results.append, "after")
    loop.run_once(limit=5)
    assert results == ["after"]


def test_run_once_returns_when_its_limit_passes_with_nothing_to_do(loop):
    assert loop.run_once(limit=0.01) == 0


def test_sockets_are_drained_and_stop_from_another_thread_ends_run(loop, context):
    router, dealer = _pair(context, "drained")
    received = []

    def on_frames(frames):
        received.append(frames[1])
        if len(received) == 3:
            threading.Thread(target=loop.stop).start()

    loop.add_socket(router, on_frames)
    for i in range(3):
        dealer.send_multipart([b"message %d" % i])
    try:
        loop.run()  # returns once stop() ran on the other thread
    finally:
        dealer.close(0)
        router.close(0)
    assert received == [b"message 0", b"message 1", b"message 2"]


def test_services_tick_and_a_removed_socket_is_not_polled(loop, context):
    class Ticking:
        def __init__(self):
            self.router = context.socket(zmq.ROUTER)
            self.router.bind("inproc://ticking")
            self.ticks = 0

        def handle_frames(self, frames):
            pass

        def tick(self, now):
            self.ticks += 1
            if self.ticks == 3:
                loop.stop()

    service = Ticking()
    loop.add_service(service)
    try:
        loop.run()
        assert service.ticks == 3
        loop.remove_socket(service.router)
        assert service.router not in loop.sockets
        loop.remove_socket(service.router)  # twice is harmless
    finally:
        service.router.close(0)


def test_raw_descriptors_are_polled(loop):
    read_fd, write_fd = os.pipe()
    seen = []
    loop.add_fd(read_fd, lambda fd: seen.append(os.read(fd, 10)))
    os.write(write_fd, b"ready")
    try:
        while not seen:
            loop.run_once(limit=5)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert seen == [b"ready"]


def test_a_zmq_poller_is_what_it_waits_on(loop):
    # The loop's wake-up pipe is an ordinary descriptor in its zmq.Poller (next to sockets).
    assert loop._wake_r in loop.fd_handlers
    assert any(item[0] == loop._wake_r and item[1] == zmq.POLLIN for item in loop.poller.sockets)
