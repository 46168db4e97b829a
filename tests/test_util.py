"""Tests for ember.util: ActorPool, Queue, multiprocessing.Pool and the joblib backend."""

import asyncio
import importlib
import multiprocessing
import os
import queue as stdlib_queue
import time

import pytest

import ember
from ember.util import ActorPool, Queue
from ember.util.multiprocessing import Pool
from ember.util.queue import Empty, Full
from ember.util.queue import Queue as QueueFromSubmodule


@pytest.fixture(autouse=True)
def _shared_cluster(cluster):
    """Every test here runs on the session's shared cluster (tests/conftest.py)."""
    yield cluster


def _cluster_cpus():
    return int(ember.cluster_resources()["CPU"])


# ---------------------------------------------------------------------------
# Helpers (module level, as user code would define them)
# ---------------------------------------------------------------------------
@ember.remote
class Sleeper:
    def work(self, v):
        # Larger inputs finish first, so completion order differs from input order.
        time.sleep(0.05 * (4 - v % 4))
        return v * 10

    def pid(self, v):
        return os.getpid()


def _square(x):
    return x * x


def _add(a, b):
    return a + b


def _fail_on_three(x):
    if x == 3:
        raise ValueError("three is not allowed")
    return x


def _slow_identity(x):
    time.sleep(0.3 if x == 0 else 0.0)
    return x


def _init_state(value):
    global _POOL_STATE
    _POOL_STATE = value
    os.environ["EMBER_TEST_POOL_INIT"] = str(value)


def _read_state(_):
    return _POOL_STATE, os.environ.get("EMBER_TEST_POOL_INIT")


def _pid(_):
    return os.getpid()


# ---------------------------------------------------------------------------
# ActorPool
# ---------------------------------------------------------------------------
def test_actor_pool_map_keeps_order():
    pool = ActorPool([Sleeper.remote(), Sleeper.remote()])
    values = list(range(8))
    assert list(pool.map(lambda a, v: a.work.remote(v), values)) == [v * 10 for v in values]
    assert not pool.has_next()
    assert pool.has_free()


def test_actor_pool_map_unordered():
    pool = ActorPool([Sleeper.remote(), Sleeper.remote()])
    out = list(pool.map_unordered(lambda a, v: a.work.remote(v), [0, 3]))
    # 3 sleeps 0.05 s, 0 sleeps 0.2 s: the faster one comes first.
    assert out == [30, 0]
    assert sorted(pool.map_unordered(lambda a, v: a.work.remote(v), range(6))) == [v * 10 for v in range(6)]


def test_actor_pool_submit_and_queueing():
    a1, a2 = Sleeper.remote(), Sleeper.remote()
    pool = ActorPool([a1, a2])
    for v in range(5):  # more submissions than actors: the rest wait
        pool.submit(lambda a, v: a.work.remote(v), v)
    assert pool.has_next()
    assert not pool.has_free()
    assert pool.pop_idle() is None
    assert [pool.get_next() for _ in range(5)] == [0, 10, 20, 30, 40]
    assert not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next()
    with pytest.raises(StopIteration):
        pool.get_next_unordered()


def test_actor_pool_idle_push_pop_and_errors():
    a1, a2 = Sleeper.remote(), Sleeper.remote()
    pool = ActorPool([a1])
    with pytest.raises(ValueError):
        pool.push(a1)
    pool.push(a2)
    popped = pool.pop_idle()
    assert popped is not None
    assert pool.has_free()
    pool.push(popped)
    with pytest.raises(ValueError):
        pool.push(popped)
    pids = {ember.get(a.pid.remote(0)) for a in (a1, a2)}
    assert len(pids) == 2
    with pytest.raises(TypeError):
        pool.submit("not callable", 1)
    with pytest.raises(TypeError):
        ActorPool(None)


def test_actor_pool_timeouts_and_mixing():
    pool = ActorPool([Sleeper.remote()])
    pool.submit(lambda a, v: a.work.remote(v), 0)  # takes 0.2 s
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.01)
    assert pool.get_next() == 0  # not ignored: still retrievable

    pool.submit(lambda a, v: a.work.remote(v), 0)
    pool.submit(lambda a, v: a.work.remote(v), 3)
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.01, ignore_if_timedout=True)
    assert pool.get_next() == 30  # the timed-out result was skipped

    assert not pool.has_next()

    pool.submit(lambda a, v: a.work.remote(v), 0)
    with pytest.raises(TimeoutError):
        pool.get_next_unordered(timeout=0.01)
    assert pool.get_next_unordered() == 0

    # Mixing: an unordered get, then ordered gets continue with the oldest left.
    pool.push(Sleeper.remote())
    for v in (0, 3, 1):
        pool.submit(lambda a, v: a.work.remote(v), v)
    assert pool.get_next_unordered() == 30
    assert [pool.get_next(), pool.get_next()] == [0, 10]
    with pytest.raises(ValueError):
        pool.get_next(timeout=-1)


# ---------------------------------------------------------------------------
# Queue
# ---------------------------------------------------------------------------
def test_queue_exceptions_and_export():
    assert Queue is QueueFromSubmodule
    assert issubclass(Empty, stdlib_queue.Empty)
    assert issubclass(Full, stdlib_queue.Full)
    util = importlib.import_module("ember.util")
    assert util.queue.Queue is Queue
    assert util.multiprocessing.Pool is Pool
    assert util.ActorPool is ActorPool


def test_queue_basic_nowait_and_batches():
    q = Queue(maxsize=3)
    assert q.empty() and not q.full() and q.qsize() == 0 and len(q) == 0
    q.put(1)
    q.put_nowait(2)
    q.put(3, block=False)
    assert q.full() and q.size() == 3
    with pytest.raises(Full):
        q.put_nowait(4)
    with pytest.raises(Full):
        q.put(4, timeout=0.1)
    assert [q.get(), q.get_nowait(), q.get(block=False)] == [1, 2, 3]
    with pytest.raises(Empty):
        q.get_nowait()
    q.put_nowait_batch([10, 11])
    with pytest.raises(Full):
        q.put_nowait_batch([12, 13])  # all or nothing
    assert q.qsize() == 2
    with pytest.raises(Empty):
        q.get_nowait_batch(3)
    assert q.get_nowait_batch(2) == [10, 11]
    assert q.get_nowait_batch(0) == []
    with pytest.raises(ValueError):
        q.get(timeout=-1)
    with pytest.raises(ValueError):
        q.put(1, timeout=-1)
    with pytest.raises(ValueError):
        q.get_nowait_batch(-1)
    with pytest.raises(TypeError):
        Queue(maxsize="3")
    q.shutdown()
    with pytest.raises(RuntimeError):
        q.qsize()


def test_queue_get_timeout_raises_empty():
    q = Queue()
    start = time.monotonic()
    with pytest.raises(Empty):
        q.get(timeout=0.3)
    elapsed = time.monotonic() - start
    assert 0.25 <= elapsed < 5
    q.shutdown(force=True)


@ember.remote
def _producer(q, n, delay):
    for i in range(n):
        time.sleep(delay)
        q.put(i)
    return "done"


@ember.remote
def _consumer(q, n):
    return [q.get(timeout=10) for _ in range(n)]


def test_queue_producer_task_and_consumer():
    q = Queue(maxsize=2)  # small bound: the producer blocks until the consumer catches up
    done = _producer.remote(q, 6, 0.01)
    got = [q.get(timeout=10) for _ in range(6)]
    assert got == list(range(6))
    assert ember.get(done) == "done"
    assert q.empty()


def test_queue_blocked_get_does_not_block_other_callers():
    q = Queue()
    consumer = _consumer.remote(q, 2)  # blocks inside the actor waiting for items
    time.sleep(0.2)
    start = time.monotonic()
    assert q.qsize() == 0  # answered while the consumer is blocked
    q.put("a")
    q.put("b")
    assert time.monotonic() - start < 5
    assert ember.get(consumer, timeout=20) == ["a", "b"]


def test_queue_blocking_put_with_timeout_then_space():
    q = Queue(maxsize=1)
    q.put("x")
    consumer = _consumer.remote(q, 2)
    q.put("y", timeout=10)  # space appears once the consumer takes "x"
    assert ember.get(consumer, timeout=20) == ["x", "y"]


def test_queue_async_api():
    q = Queue(maxsize=1)

    async def main():
        await q.put_async(1)
        with pytest.raises(Full):
            await q.put_async(2, block=False)
        with pytest.raises(Full):
            await q.put_async(2, timeout=0.05)
        first = await q.get_async()
        with pytest.raises(Empty):
            await q.get_async(timeout=0.05)
        with pytest.raises(Empty):
            await q.get_async(block=False)
        return first

    assert asyncio.run(main()) == 1


# ---------------------------------------------------------------------------
# multiprocessing.Pool
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pool(cluster):
    with Pool(processes=2) as p:
        yield p


def test_pool_map_and_chunksize(pool):
    assert pool.map(_square, range(10)) == [x * x for x in range(10)]
    assert pool.map(_square, range(10), chunksize=3) == [x * x for x in range(10)]
    assert pool.map(_square, []) == []
    assert pool.map(lambda x: x + 1, [1, 2]) == [2, 3]
    res = pool.map_async(_square, range(4))
    assert res.get(timeout=30) == [0, 1, 4, 9]
    assert res.ready() and res.successful()


def test_pool_imap_and_imap_unordered(pool):
    assert list(pool.imap(_square, range(7))) == [x * x for x in range(7)]
    assert list(pool.imap(_square, iter(range(7)), chunksize=3)) == [x * x for x in range(7)]
    assert sorted(pool.imap_unordered(_square, range(5), chunksize=2)) == [0, 1, 4, 9, 16]
    # One item per actor: the slow 0 finishes after 1.
    assert list(pool.imap_unordered(_slow_identity, [0, 1])) == [1, 0]
    it = pool.imap(_slow_identity, [0])
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.01)
    assert it.next(timeout=30) == 0
    with pytest.raises(StopIteration):
        next(it)


def test_pool_starmap_apply(pool):
    assert pool.starmap(_add, [(1, 2), (3, 4)]) == [3, 7]
    assert pool.starmap_async(_add, [(1, 1)]).get() == [2]
    assert pool.apply(_add, (2, 3)) == 5
    assert pool.apply(_add, (2,), {"b": 5}) == 7

    seen = []
    res = pool.apply_async(_add, (1, 2), callback=seen.append)
    assert res.get(timeout=30) == 3
    res.wait()
    assert res.ready() and res.successful() and seen == [3]

    slow = pool.apply_async(_slow_identity, (0,))
    with pytest.raises(ValueError):
        slow.successful()  # not ready yet
    with pytest.raises(multiprocessing.TimeoutError):
        slow.get(timeout=0.01)
    with pytest.raises(TimeoutError):  # also the builtin TimeoutError
        slow.get(timeout=0.01)
    assert slow.get(timeout=30) == 0


def test_pool_errors_propagate(pool):
    with pytest.raises(ValueError, match="three is not allowed"):
        pool.map(_fail_on_three, range(6))
    errors = []
    res = pool.apply_async(_fail_on_three, (3,), error_callback=errors.append)
    with pytest.raises(ValueError):
        res.get(timeout=30)
    assert not res.successful()
    assert len(errors) == 1 and isinstance(errors[0], ValueError)
    # imap raises at the failing position and can continue.
    it = pool.imap(_fail_on_three, range(5))
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError):
        next(it)
    assert list(it) == [4]
    with pytest.raises(TypeError):
        pool.map(42, [1])
    with pytest.raises(ValueError):
        pool.imap(_square, [1], chunksize=0)
    # The pool is still usable after errors.
    assert pool.map(_square, [3]) == [9]


def test_pool_initializer_state_persists():
    with Pool(processes=2, initializer=_init_state, initargs=(7,)) as p:
        out = p.map(_read_state, range(6), chunksize=1)
    assert out == [(7, "7")] * 6


def test_pool_initializer_globals_of_functions_sent_by_value():
    # Nested functions travel by value with a private copy of their globals;
    # a global set by the initializer must still be visible to later calls.
    def init(value):
        global _BY_VALUE_STATE
        _BY_VALUE_STATE = value

    def read(x):
        return _BY_VALUE_STATE, x

    def bump(_):
        global _BY_VALUE_STATE
        _BY_VALUE_STATE += "!"
        return _BY_VALUE_STATE

    with Pool(processes=1, initializer=init, initargs=("s",)) as p:
        assert p.map(read, range(3), chunksize=1) == [("s", 0), ("s", 1), ("s", 2)]
        assert p.map(bump, range(2), chunksize=1) == ["s!", "s!!"]
        assert p.apply(read, (9,)) == ("s!!", 9)


def test_pool_close_join_and_lifecycle():
    p = Pool(2)
    res = p.map_async(_square, range(5))
    with pytest.raises(ValueError):
        p.join()  # still running
    p.close()
    with pytest.raises(ValueError):
        p.map(_square, [1])
    with pytest.raises(ValueError):
        p.apply_async(_square, (1,))
    p.join()
    assert res.get(timeout=1) == [0, 1, 4, 9, 16]
    p.terminate()  # idempotent after close/join


def test_pool_maxtasksperchild_replaces_actors():
    with Pool(processes=1, maxtasksperchild=2) as p:
        pids = p.map(_pid, range(6), chunksize=1)
    assert len(set(pids)) == 3


def test_pool_argument_validation():
    with pytest.raises(ValueError):
        Pool(processes=0)
    with pytest.raises(TypeError):
        Pool(processes=1, initializer=5)
    with pytest.raises(ValueError):
        Pool(processes=1, maxtasksperchild=0)
    with pytest.raises(ValueError):
        Pool(processes=1000)  # more than the cluster's CPUs
    cpus = _cluster_cpus()
    with Pool() as p:  # defaults to one actor per cluster CPU
        assert len(set(p.map(_pid, range(2 * cpus), chunksize=1))) == cpus


# ---------------------------------------------------------------------------
# joblib / scikit-learn
# ---------------------------------------------------------------------------
def test_joblib_parallel_backend():
    joblib = pytest.importorskip("joblib")
    from ember.util.joblib import register_ember, register_ray

    assert register_ray is register_ember
    register_ember()
    with joblib.parallel_backend("ember"):
        out = joblib.Parallel(n_jobs=2)(joblib.delayed(_square)(i) for i in range(20))
    assert out == [i * i for i in range(20)]
    with joblib.parallel_backend("ember", n_jobs=2):
        gen = joblib.Parallel(return_as="generator")(joblib.delayed(_add)(i, 1) for i in range(5))
        assert list(gen) == [1, 2, 3, 4, 5]
    # Ray's backend name works too, for code written against ray.util.joblib.
    with joblib.parallel_backend("ray", n_jobs=2):
        pids = joblib.Parallel()(joblib.delayed(_pid)(i) for i in range(4))
    assert os.getpid() not in pids
    with joblib.parallel_backend("ember"):
        with pytest.raises(ValueError, match="three"):
            joblib.Parallel(n_jobs=2)(joblib.delayed(_fail_on_three)(i) for i in range(6))


def test_sklearn_under_ember_backend():
    joblib = pytest.importorskip("joblib")
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    from ember.util.joblib import register_ember

    register_ember()
    X, y = load_iris(return_X_y=True)
    search = GridSearchCV(LogisticRegression(max_iter=200), {"C": [0.1, 1.0]}, cv=3, n_jobs=2)
    with joblib.parallel_backend("ember"):
        search.fit(X, y)
    assert search.best_score_ > 0.9
    assert set(search.cv_results_["param_C"]) == {0.1, 1.0}
