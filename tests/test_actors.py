"""Actors: ordering, concurrency, names, lifetimes, handles, kill."""

import asyncio
import os
import threading

import pytest

import ember
from ember.exceptions import ActorDiedError


@ember.remote
class Counter:
    def __init__(self, start=0):
        self.value = start

    def incr(self, by=1):
        self.value += by
        return self.value

    def get(self):
        return self.value


def test_calls_run_in_submission_order(cluster):
    counter = Counter.remote(10)
    refs = [counter.incr.remote() for _ in range(200)]
    assert ember.get(refs) == list(range(11, 211))


def test_actor_method_num_returns(cluster):
    @ember.remote
    class Pair:
        @ember.method(num_returns=2)
        def pair(self):
            return 1, 2

    p = Pair.remote()
    a, b = p.pair.remote()
    assert ember.get([a, b]) == [1, 2]
    assert ember.get(p.pair.options(num_returns=1).remote()) == (1, 2)


def test_async_actor_runs_calls_concurrently(cluster):
    @ember.remote
    class Gate:
        def __init__(self, n):
            self.n = n
            self.arrived = 0
            self.event = None

        async def enter(self):
            if self.event is None:
                self.event = asyncio.Event()
            self.arrived += 1
            if self.arrived == self.n:
                self.event.set()
            await asyncio.wait_for(self.event.wait(), 20)  # only if all 5 run at once
            return self.arrived

    gate = Gate.remote(5)
    assert ember.get([gate.enter.remote() for _ in range(5)], timeout=30) == [5] * 5


def test_async_actor_max_concurrency_limits(cluster):
    @ember.remote(max_concurrency=2)
    class Limited:
        def __init__(self):
            self.running = 0
            self.peak = 0

        async def work(self):
            self.running += 1
            self.peak = max(self.peak, self.running)
            await asyncio.sleep(0.05)
            self.running -= 1

        async def peak_seen(self):
            return self.peak

    limited = Limited.remote()
    ember.get([limited.work.remote() for _ in range(6)])
    assert ember.get(limited.peak_seen.remote()) == 2


def test_threaded_actor(cluster):
    @ember.remote(max_concurrency=3)
    class Threaded:
        def __init__(self):
            self.barrier = threading.Barrier(3, timeout=20)

        def meet(self):
            return self.barrier.wait() >= 0

    actor = Threaded.remote()
    assert ember.get([actor.meet.remote() for _ in range(3)], timeout=30) == [True] * 3


def test_named_actor_and_get_if_exists(cluster):
    Counter.options(name="shared-counter").remote(100)
    handle = ember.get_actor("shared-counter")
    assert ember.get(handle.incr.remote()) == 101
    with pytest.raises(ValueError, match="already exists"):
        Counter.options(name="shared-counter").remote()
    again = Counter.options(name="shared-counter", get_if_exists=True).remote()
    assert ember.get(again.incr.remote()) == 102
    ember.kill(handle)
    with pytest.raises(ValueError):
        ember.get_actor("shared-counter")


def test_named_actor_namespaces(cluster):
    Counter.options(name="ns-counter", namespace="other").remote(1)
    with pytest.raises(ValueError):
        ember.get_actor("ns-counter")
    handle = ember.get_actor("ns-counter", namespace="other")
    assert ember.get(handle.get.remote()) == 1
    ember.kill(handle)


def test_handles_passed_to_tasks_and_actors(cluster):
    counter = Counter.remote()

    @ember.remote
    def bump(c, times):
        return ember.get([c.incr.remote() for _ in range(times)])[-1]

    @ember.remote
    class Caller:
        def __init__(self, c):
            self.c = c

        def call(self):
            return ember.get(self.c.incr.remote(10))

    assert ember.get(bump.remote(counter, 5)) == 5
    caller = Caller.remote(counter)
    assert ember.get(caller.call.remote()) == 15
    assert ember.get(counter.get.remote()) == 15


def test_kill_fails_pending_calls(cluster):
    @ember.remote
    class Slow:
        def wait(self):
            import time

            time.sleep(60)

    slow = Slow.remote()
    ember.get(slow.__ray_ready__.remote())
    pending = slow.wait.remote()
    ember.kill(slow)
    with pytest.raises(ActorDiedError):
        ember.get(pending, timeout=30)
    with pytest.raises(ActorDiedError):
        ember.get(slow.wait.remote(), timeout=30)


def test_constructor_error(cluster):
    @ember.remote
    class Broken:
        def __init__(self):
            raise ValueError("cannot construct")

        def f(self):
            return 1

    broken = Broken.remote()
    with pytest.raises(ActorDiedError, match="cannot construct"):
        ember.get(broken.f.remote(), timeout=30)


def test_actor_refs_survive_after_driver_drops_them(cluster):
    @ember.remote
    class Holder:
        def keep(self, refs):
            self.refs = refs

        def read(self):
            return ember.get(self.refs[0])

    holder = Holder.remote()
    ref = ember.put("kept")
    ember.get(holder.keep.remote([ref]))
    del ref
    import gc

    gc.collect()
    assert ember.get(holder.read.remote()) == "kept"


def test_actor_resources_default_zero_while_running(cluster):
    @ember.remote
    class Idle:
        def ping(self):
            return "pong"

    actors = [Idle.remote() for _ in range(6)]  # more than the 4 CPUs: actors hold 0 CPU once placed
    assert ember.get([a.ping.remote() for a in actors], timeout=60) == ["pong"] * 6


def test_actor_constructor_takes_refs(cluster):
    import numpy as np

    big = ember.put(np.arange(300_000))
    small = ember.put("label")

    @ember.remote
    class Holder:
        def __init__(self, array, label, nested):
            self.total = int(array.sum())
            self.label = label
            self.nested = ember.get(nested[0])

        def describe(self):
            return self.total, self.label, self.nested

    holder = Holder.remote(big, small, [small])
    assert ember.get(holder.describe.remote()) == (int(np.arange(300_000).sum()), "label", "label")


def test_actor_streaming_method(cluster):
    @ember.remote
    class Producer:
        @ember.method(num_returns="streaming")
        def produce(self, n):
            for i in range(n):
                yield i

    producer = Producer.remote()
    assert [ember.get(r) for r in producer.produce.remote(4)] == [0, 1, 2, 3]


def test_dropping_the_only_handle_stops_the_actor(cluster):
    import psutil

    @ember.remote
    class Temporary:
        def pid(self):
            return os.getpid()

    handle = Temporary.remote()
    pid = ember.get(handle.pid.remote())
    del handle
    import gc

    gc.collect()
    from conftest import wait_for

    wait_for(lambda: not psutil.pid_exists(pid), message="the unreferenced actor's process to exit")


def test_async_actor_streaming_method(cluster):
    @ember.remote
    class AsyncProducer:
        @ember.method(num_returns="streaming")
        async def produce(self, n):
            for i in range(n):
                await asyncio.sleep(0)
                yield i * 10

    producer = AsyncProducer.remote()
    assert [ember.get(r) for r in producer.produce.remote(3)] == [0, 10, 20]


def test_exit_actor_and_current_actor(cluster):
    from ember.actor import exit_actor

    @ember.remote(max_restarts=3)
    class Quitter:
        def me(self):
            return ember.get_runtime_context().current_actor

        def quit(self):
            exit_actor()

    quitter = Quitter.remote()
    assert ember.get(quitter.me.remote()) == quitter
    with pytest.raises(ActorDiedError, match="exit_actor"):
        ember.get(quitter.quit.remote(), timeout=30)
    with pytest.raises(ActorDiedError):  # not restarted, although max_restarts allows it
        ember.get(quitter.me.remote(), timeout=30)
    with pytest.raises(TypeError):
        exit_actor()


def test_tasks_create_and_find_named_actors_in_the_jobs_namespace(cluster):
    @ember.remote
    def create():
        Counter.options(name="made-in-a-task").remote(7)
        return ember.get_runtime_context().namespace

    namespace = ember.get(create.remote())
    assert namespace == ember.get_runtime_context().namespace
    handle = ember.get_actor("made-in-a-task")  # found from the driver, in the same namespace

    @ember.remote
    def find():
        return ember.get(ember.get_actor("made-in-a-task").get.remote())

    assert ember.get(find.remote()) == 7
    ember.kill(handle)


def test_actor_is_stopped_when_its_last_queued_call_fails_before_sending(cluster):
    import psutil

    @ember.remote
    def bad():
        raise ValueError("bad argument")

    @ember.remote
    class User:
        def pid(self):
            return os.getpid()

        def use(self, value):
            return value

    handle = User.remote()
    pid = ember.get(handle.pid.remote())
    ref = handle.use.remote(bad.remote())  # fails with its argument's error, never sent
    del handle
    import gc

    gc.collect()
    with pytest.raises(ValueError):
        ember.get(ref, timeout=30)
    from conftest import wait_for

    wait_for(lambda: not psutil.pid_exists(pid), message="the unreferenced actor's process to exit")


def test_ray_terminate_is_not_restarted(cluster):
    @ember.remote(max_restarts=2)
    class Graceful:
        def pid(self):
            return os.getpid()

    actor = Graceful.remote()
    ember.get(actor.pid.remote())
    actor.__ray_terminate__.remote()
    with pytest.raises(ActorDiedError, match="__ray_terminate__"):
        ember.get(actor.pid.remote(), timeout=30)


def test_actors_created_by_a_detached_actor_outlive_the_job(cluster):
    from conftest import run_driver

    run_driver(f"""
        import ember
        ember.init(address="{cluster.address_info["address"]}", namespace="fate")

        @ember.remote
        class Child:
            def ping(self):
                return "child alive"

        @ember.remote
        class Parent:
            def __init__(self):
                self.child = Child.remote()

            def ping_child(self):
                return ember.get(self.child.ping.remote())

        parent = Parent.options(name="parent", lifetime="detached").remote()
        assert ember.get(parent.ping_child.remote()) == "child alive"
    """)
    parent = ember.get_actor("parent", namespace="fate")
    assert ember.get(parent.ping_child.remote(), timeout=30) == "child alive"  # its child shares its fate
    ember.kill(parent)


def test_classmethods_and_generator_methods_through_a_handle(cluster):
    @ember.remote
    class Kinds:
        @classmethod
        def kind(cls):
            return cls.__name__

        def numbers(self, n):
            yield from range(n)

    kinds = Kinds.remote()
    assert ember.get(kinds.kind.remote()) == "Kinds"
    assert [ember.get(r) for r in kinds.numbers.remote(3)] == [0, 1, 2]
