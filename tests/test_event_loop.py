"""service.EventLoop, the one poll loop a process's sockets, descriptors and cross-thread calls share
(the head and node manager run it, and a worker's task socket): real ZeroMQ sockets and pipes."""

import os
import threading
import time

import pytest
import zmq

from ember.runtime.service import EventLoop, SpinPolicy


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


@pytest.fixture(params=["blocking", "spinning"])
def loop(request):
    # Every test runs on both poll paths: a loop that sleeps in poll at once, and one whose
    # SpinPolicy says to poll without sleeping first (as a driver's and a worker's do).
    loop = EventLoop()
    if request.param == "spinning":
        loop.spin = SpinPolicy(0.0005)
        loop.spin.window = loop.spin.limit
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
    loop.run_once(limit=0)
    assert order == [1, 2, 3]


def _wait_until_polling(loop):
    # The poller sets _polling just before it looks at pending work and polls; a thread that queues
    # a call after that must write a wake-up.
    for _ in range(200_000):
        if loop._polling:
            return
        time.sleep(0.0001)
    raise AssertionError("the loop's thread never polled")


def test_many_calls_cost_one_wake_up_while_a_thread_polls(loop):
    results = []
    writes = []
    write_wake = loop._write_wake
    loop._write_wake = lambda: (writes.append(1), write_wake())
    polling = threading.Thread(target=loop.run_once)  # no limit: only a wake-up ends this poll
    polling.start()
    _wait_until_polling(loop)
    for i in range(1000):
        loop.call_soon(results.append, i)
    polling.join(timeout=10)
    assert not polling.is_alive()
    loop.run_once(limit=0)  # calls queued after that round's drain, which needed no wake-up
    assert results == list(range(1000))
    assert writes == [1]  # coalesced: one byte while the loop polled


def test_work_queued_while_nobody_polls_writes_no_wake_up_and_is_done_before_the_next_poll(loop):
    # A synchronous get(f.remote()): the thread that queues the submission leads the next round
    # itself, so a pipe write, a pipe read and a round of their own would be waste.
    results = []
    for i in range(3):
        loop.call_soon(results.append, i)
    loop.nudge()  # work for after_round (a release): done before the poll, which may still block
    with pytest.raises(BlockingIOError):
        os.read(loop._wake_r, 4096)
    rounds = []
    loop.after_round = lambda: rounds.append(list(results)) or False  # False: nothing completed
    read_fd, write_fd = os.pipe()
    loop.add_fd(read_fd, lambda fd: results.append(os.read(fd, 10)))
    # The calls ran, and the round's own work with them, before the poll that then waits for the
    # descriptor (a reply, for a synchronous call).
    threading.Timer(0.05, os.write, (write_fd, b"reply")).start()
    try:
        assert loop.run_once() == 1
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert results == [0, 1, 2, b"reply"]
    assert rounds == [[0, 1, 2], [0, 1, 2, b"reply"]]


def test_a_round_whose_queued_work_completed_something_does_not_block(loop):
    # after_round returning True (a client woke waiters) makes the poll after it return at once;
    # so does queued work in a loop without after_round (its caller looks again after each round).
    loop.call_soon(lambda: None)
    assert loop.run_once() == 0  # would wait for ever if the poll blocked
    loop.after_round = lambda: True
    loop.call_soon(lambda: None)
    assert loop.run_once() == 0


def test_a_wake_up_while_nobody_polls_is_not_lost_by_a_poller_that_comes_later(loop):
    loop.wake()
    assert loop.run_once() == 0  # no limit, no pipe byte: the pending wake-up alone ends the round


def test_a_nudge_while_a_thread_polls_ends_its_poll(loop):
    rounds = []
    loop.after_round = lambda: rounds.append(1) or False
    polling = threading.Thread(target=loop.run_once)  # no limit: only a wake-up ends this poll
    polling.start()
    _wait_until_polling(loop)
    loop.nudge()
    polling.join(timeout=10)
    assert not polling.is_alive() and rounds == [1]


def test_a_raising_call_does_not_stop_the_others(loop):
    results = []
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(results.append, "after")
    loop.run_once(limit=0)
    assert results == ["after"]


def test_call_later_runs_once_its_delay_passed_and_in_deadline_order(loop):
    done = []
    loop.call_later(3600, done.append, "in an hour")
    loop.call_later(0.05, done.append, "later")
    loop.call_later(0.01, done.append, "sooner")
    # No services, no limit: a loop that waits for ever must wake up for its timers.
    while len(done) < 2:
        loop.run_once()
    assert done == ["sooner", "later"]
    loop.run_once(limit=0.01)
    assert done == ["sooner", "later"]  # not before its time


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


def test_the_wake_pipe_and_zmq_descriptors_share_one_poll(loop, context):
    # ZeroMQ sockets are polled through their ZMQ_FD next to raw descriptors, not by zmq_poll.
    assert loop._wake_r in loop.fd_handlers
    router, dealer = _pair(context, "shared")
    try:
        loop.add_socket(router, lambda frames: None)
        assert loop._socket_fds == {router.getsockopt(zmq.FD): router}
        loop.remove_socket(router)
        assert loop._socket_fds == {}
    finally:
        dealer.close(0)
        router.close(0)


def _ember_pair(name: str):
    # transport's sockets tell the loop when they were used, so the loop asks libzmq about them
    # only then or when their descriptor fires (plain pyzmq sockets are asked every round).
    from ember.runtime import transport

    context = transport.context()
    router = context.socket(zmq.ROUTER)
    router.bind(f"inproc://{name}-{os.getpid()}")
    dealer = context.socket(zmq.DEALER)
    dealer.connect(f"inproc://{name}-{os.getpid()}")
    assert isinstance(router, transport.Socket)
    return router, dealer


def test_a_message_that_arrives_while_the_loop_handles_another_is_not_lost(loop):
    router, dealer = _ember_pair("meanwhile")
    peer_router, peer_dealer = _ember_pair("meanwhile-peer")
    received = []

    def on_router(frames):
        received.append(frames[1])
        if frames[1] == b"first":
            # While this one is handled, the next arrives on this socket and another on a second one.
            dealer.send_multipart([b"second"])
            peer_dealer.send_multipart([b"elsewhere"])
            time.sleep(0.05)  # let libzmq's I/O thread deliver both before the handler returns

    loop.add_socket(router, on_router)
    loop.add_socket(peer_router, lambda frames: received.append(frames[1]))
    dealer.send_multipart([b"first"])
    try:
        deadline = time.monotonic() + 10
        while len(received) < 3 and time.monotonic() < deadline:
            loop.run_once(limit=5)  # blocks until something arrives: a lost wake-up would hang here
    finally:
        for sock in (router, dealer, peer_router, peer_dealer):
            sock.close(0)
    assert sorted(received) == [b"elsewhere", b"first", b"second"]


def test_a_reply_announced_to_a_send_is_found_before_the_loop_sleeps(loop):
    # A send on a socket may process the command that announced an incoming message, after which
    # the socket's descriptor stays quiet: the loop must look at a socket it sent on before sleeping.
    router, dealer = _ember_pair("announced")
    received = []
    loop.add_socket(dealer, lambda frames: received.append(frames[0]))
    try:
        for round_ in range(200):
            dealer.send_multipart([b"ping"])
            identity, ping = router.recv_multipart()
            router.send_multipart([identity, b"pong %d" % round_])
            time.sleep(0.001)  # the reply is in the dealer's pipe before the next send
            dealer.send_multipart([b"ping"])  # may take the reply's announcement
            router.recv_multipart()
            deadline = time.monotonic() + 5
            while len(received) == round_ and time.monotonic() < deadline:
                loop.run_once(limit=1)  # a reply that nothing announces is never found
            assert received[-1:] == [b"pong %d" % round_]
    finally:
        router.close(0)
        dealer.close(0)


def test_a_burst_longer_than_one_drain_is_finished_without_a_new_message(loop):
    # One round takes at most 1,000 messages from a socket (1,500 stay under the pipe's high-water mark);
    # the rest must be taken by the next rounds
    # although nothing new arrives (the descriptor signalled once, for all of them).
    router, dealer = _ember_pair("burst")
    received = []
    loop.add_socket(router, lambda frames: received.append(frames[1]))
    try:
        loop.run_once(limit=0.01)  # the socket has been looked at: from now on its descriptor signals
        for i in range(1500):
            dealer.send_multipart([b"%d" % i])
        deadline = time.monotonic() + 10
        while len(received) < 1500 and time.monotonic() < deadline:
            loop.run_once(limit=1)
    finally:
        router.close(0)
        dealer.close(0)
    assert received == [b"%d" % i for i in range(1500)]


def test_spin_policy_spins_only_after_a_short_wait():
    spin = SpinPolicy(0.0002)
    assert spin.window == 0.0  # nothing known yet: the first wait sleeps at once
    spin.waited(0.00005, True)  # an answer in 50 us: the next wait spins
    assert spin.window == 0.0002
    spin.waited(0.0001, True)
    assert spin.window == 0.0002
    spin.waited(0.5, True)  # a long wait (an idle process, a long task): stop spinning
    assert spin.window == 0.0
    spin.waited(0.00005, True)
    spin.waited(0.0001, False)  # a wait that timed out, however short, is no answer
    assert spin.window == 0.0


def test_spin_policy_from_the_environment(monkeypatch):
    monkeypatch.delenv("EMBER_SPIN_US", raising=False)
    assert SpinPolicy.from_environment(150).limit == pytest.approx(0.00015)
    monkeypatch.setenv("EMBER_SPIN_US", "0")
    assert SpinPolicy.from_environment() is None
    monkeypatch.setenv("EMBER_SPIN_US", "300")
    assert SpinPolicy.from_environment().limit == pytest.approx(0.0003)
    monkeypatch.setenv("EMBER_SPIN_US", "lots")
    with pytest.raises(ValueError, match="EMBER_SPIN_US"):
        SpinPolicy.from_environment()
    with pytest.raises(ValueError):
        SpinPolicy(-1)


def test_a_spinning_loop_learns_from_its_waits(context):
    """An answer within the window keeps the loop spinning; a wait that outlasts it, or a poll that
    times out, turns the spin off: an idle process sleeps in poll."""
    loop = EventLoop()
    try:
        loop.spin = SpinPolicy(0.05)
        read_fd, write_fd = os.pipe()
        seen = []
        loop.add_fd(read_fd, lambda fd: seen.append(os.read(fd, 10)))
        os.write(write_fd, b"a")
        loop.run_once(limit=1.0)  # already readable: a short wait
        assert seen == [b"a"] and loop.spin.window == 0.05
        loop.run_once(limit=0.06)  # nothing comes: spins, then sleeps until the limit
        assert loop.spin.window == 0.0
        os.write(write_fd, b"b")
        loop.run_once(limit=1.0)
        assert seen == [b"a", b"b"] and loop.spin.window == 0.05
        os.close(write_fd)
        os.close(read_fd)
        loop.remove_fd(read_fd)
    finally:
        loop.close()


def test_spin_policy_asks_whether_a_cpu_is_free():
    spin = SpinPolicy(0.0002)
    try:
        assert isinstance(spin.cpu_free(), bool)  # this test's thread is runnable: True unless busy
    finally:
        spin.close()
    assert spin.cpu_free() is False  # closed: cannot tell, so never spin
