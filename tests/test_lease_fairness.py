"""A driver that keeps every CPU busy, round after round of tasks, does not starve another driver:
its leases go back to the node once their turn is over (LEASE_TURN), and the node grants the
other driver's waiting request (a submitted job's first task never ran before)."""

import threading

from conftest import run_driver

import ember


@ember.remote
def _busy(i):
    import time

    time.sleep(0.02)
    return i


def test_a_driver_with_back_to_back_rounds_does_not_starve_another(cluster):
    stop, rounds = threading.Event(), []

    def keep_busy():
        while not stop.is_set():
            ember.get([_busy.remote(i) for i in range(40)], timeout=60)  # more tasks than CPUs
            rounds.append(1)

    thread = threading.Thread(target=keep_busy, daemon=True)
    thread.start()
    try:
        code = f"""
            import ember
            ember.init(address={cluster.address!r})
            print("other driver got", ember.get(ember.remote(lambda: 6 * 7).remote(), timeout=30))
        """
        assert "other driver got 42" in run_driver(code, timeout=60).stdout
        assert rounds  # the busy driver kept going meanwhile
    finally:
        stop.set()
        thread.join(60)
