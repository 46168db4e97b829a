"""Ray API gaps: dynamic generators, waiting on and cancelling streaming generators, Ray's actor
method options, concurrency groups, the state API and the timeline."""

import asyncio
import gc
import glob
import json
import os
import threading
import time
import uuid

import msgpack
import numpy as np
import pytest
from conftest import wait_for

import ember
from ember import api
from ember.exceptions import TaskCancelledError
from ember.runtime.client.core_client import current_client
from ember.runtime.head.task_summary import TaskSummary
from ember.util import state


def store_files() -> set:
    return set(glob.glob(f"/dev/shm/{api._cluster_process.store_prefix}-*"))


# --- num_returns="dynamic" ---------------------------------------------------------------------------
def test_dynamic_generator_returns_one_ref_of_refs(cluster):
    @ember.remote(num_returns="dynamic")
    def squares(n):
        for i in range(n):
            yield i * i

    ref = squares.remote(5)
    assert isinstance(ref, ember.ObjectRef)
    generator = ember.get(ref)
    assert isinstance(generator, ember.DynamicObjectRefGenerator)
    assert len(generator) == 5
    assert ember.get(list(generator)) == [0, 1, 4, 9, 16]
    # Options select it too, and an empty generator is an empty DynamicObjectRefGenerator.
    assert len(ember.get(squares.options(num_returns="dynamic").remote(0))) == 0


def test_dynamic_generator_refs_are_freed_with_the_outer_ref(cluster):
    @ember.remote(num_returns="dynamic")
    def blocks(n):
        for i in range(n):
            yield np.full(300_000, i, dtype=np.float64)  # stored in shared memory, one file each

    before = store_files()
    outer = blocks.remote(3)
    refs = list(ember.get(outer))
    created = store_files() - before
    assert len(created) == 3
    inner_ids = [ref.binary() for ref in refs]
    kept = refs[1]
    del refs
    gc.collect()
    # The refs live inside the outer object's value: dropping the generator frees nothing.
    assert store_files() & created == created
    del outer
    gc.collect()
    wait_for(lambda: len(store_files() & created) == 1, message="the values nobody holds to be freed")
    assert ember.get(kept)[0] == 1.0  # a ref taken out of the generator keeps its value
    del kept
    gc.collect()
    wait_for(lambda: not store_files() & created, message="the last value to be freed")
    objects = current_client().objects.entries
    wait_for(lambda: not any(oid in objects for oid in inner_ids), message="the owner to forget the values")


def test_dynamic_generator_error_is_its_last_value(cluster):
    @ember.remote(num_returns="dynamic")
    def breaks():
        yield "first"
        raise ValueError("generator broke")

    refs = list(ember.get(breaks.remote()))
    assert len(refs) == 2
    assert ember.get(refs[0]) == "first"
    with pytest.raises(ValueError, match="generator broke"):
        ember.get(refs[1])


def test_dynamic_actor_method(cluster):
    @ember.remote
    class Source:
        @ember.method(num_returns="dynamic")
        def items(self, n):
            yield from range(n)

    source = Source.remote()
    assert ember.get(list(ember.get(source.items.remote(3)))) == [0, 1, 2]


# --- get / wait / cancel on an ObjectRefGenerator -----------------------------------------------------
@ember.remote(num_returns="streaming")
def gated(path):
    yield 1
    while not os.path.exists(path):
        time.sleep(0.01)
    yield 2


def test_wait_on_a_streaming_generator(cluster, tmp_path):
    gate = str(tmp_path / "gate")
    generator = gated.remote(gate)
    plain = ember.put("x")
    ready, not_ready = ember.wait([generator], timeout=30)
    assert ready == [generator] and not_ready == []
    assert ember.get(next(generator)) == 1
    # The task waits for the gate: its next value cannot be ready.
    ready, not_ready = ember.wait([generator, plain], num_returns=2, timeout=0.5)
    assert ready == [plain] and not_ready == [generator]
    open(gate, "w").close()
    ready, _ = ember.wait([generator], timeout=30)
    assert ready == [generator]
    assert ember.get(next(generator)) == 2
    # Ended with nothing left: ready, as next() returns at once (StopIteration).
    assert ember.wait([generator], timeout=30)[0] == [generator]
    with pytest.raises(StopIteration):
        next(generator)
    assert generator.is_finished()
    with pytest.raises(ValueError, match="more than once"):
        ember.wait([generator, generator])


def test_get_drains_a_streaming_generator(cluster, tmp_path):
    gate = tmp_path / "gate"
    gate.touch()
    assert ember.get(gated.remote(str(gate))) == [1, 2]


def test_cancel_a_streaming_generator(cluster, tmp_path):
    generator = gated.remote(str(tmp_path / "never"))
    assert ember.get(next(generator)) == 1
    ember.cancel(generator)
    rest = list(generator)
    assert len(rest) == 1
    with pytest.raises(TaskCancelledError):
        ember.get(rest[0])
    with pytest.raises(TypeError, match="ObjectRefGenerator"):
        ember.cancel("not a ref")


# --- Ray's actor method options -------------------------------------------------------------------------
def test_method_options_retry_exceptions(cluster):
    @ember.remote
    class Flaky:
        def __init__(self):
            self.calls = 0

        @ember.method(max_task_retries=2, retry_exceptions=[ValueError])
        def succeed_third_time(self):
            self.calls += 1
            if self.calls < 3:
                raise ValueError(f"attempt {self.calls}")
            return self.calls

        def reset(self):
            self.calls = 0

    flaky = Flaky.remote()
    assert ember.get(flaky.succeed_third_time.remote()) == 3
    ember.get(flaky.reset.remote())
    with pytest.raises(ValueError, match="attempt 1"):
        ember.get(flaky.succeed_third_time.options(retry_exceptions=False).remote())
    ember.get(flaky.reset.remote())
    with pytest.raises(ValueError, match="attempt 2"):  # one retry only
        ember.get(flaky.succeed_third_time.options(max_task_retries=1).remote())


def test_method_options_validation():
    @ember.method(tensor_transport="object_store", enable_task_events=True, concurrency_group="io")
    def accepted(self):
        pass

    with pytest.raises(ValueError, match="no GPU tensor transport"):
        ember.method(tensor_transport="nccl")
    with pytest.raises(ValueError, match="Invalid option"):
        ember.method(max_retries=2)
    with pytest.raises(TypeError, match="enable_task_events"):
        ember.method(enable_task_events="no")
    with pytest.raises(ValueError, match="Concurrency group .io."):
        ember.remote(concurrency_groups={"io": 0})(type("Bad", (), {}))


def test_enable_task_events_false_leaves_calls_out_of_the_state_api(cluster):
    @ember.remote
    class Quiet:
        @ember.method(enable_task_events=False)
        def hidden(self):
            return 1

        def shown(self):
            return 2

    actor = Quiet.remote()
    tag = uuid.uuid4().hex[:8]
    assert ember.get(actor.hidden.options(name=f"hidden-{tag}").remote()) == 1
    assert ember.get(actor.shown.options(name=f"shown-{tag}").remote()) == 2
    # An owner's events reach the head in order: once the later call is listed, the earlier would be.
    wait_for(lambda: state.list_tasks(filters=[("name", "=", f"shown-{tag}")]), message="the shown call's events")
    assert state.list_tasks(filters=[("name", "=", f"hidden-{tag}")]) == []


# --- concurrency groups ---------------------------------------------------------------------------------
@ember.remote(concurrency_groups={"io": 2, "compute": 3})
class Grouped:
    """Each call holds its slot until released, so the peaks count what ran at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.running = {}
        self.peak = {}
        self.peak_total = 0

    def _hold(self, group):
        with self.lock:
            self.running[group] = self.running.get(group, 0) + 1
            self.peak[group] = max(self.peak.get(group, 0), self.running[group])
            self.peak_total = max(self.peak_total, sum(self.running.values()))
        self.release.wait(60)
        with self.lock:
            self.running[group] -= 1
        return threading.current_thread().name

    @ember.method(concurrency_group="io")
    def io(self):
        return self._hold("io")

    @ember.method(concurrency_group="compute")
    def compute(self):
        return self._hold("compute")

    def plain(self):
        return threading.current_thread().name

    def peaks(self):  # the default group: runs while the others are full
        with self.lock:
            return dict(self.peak), self.peak_total

    def open(self):
        self.release.set()


def test_concurrency_groups_run_apart_each_at_its_own_limit(cluster):
    actor = Grouped.remote()
    refs = [actor.io.remote() for _ in range(5)] + [actor.compute.remote() for _ in range(7)]
    wait_for(lambda: ember.get(actor.peaks.remote()) == ({"io": 2, "compute": 3}, 5), message="both groups full")
    ember.get(actor.open.remote())
    names = ember.get(refs, timeout=60)
    assert ember.get(actor.peaks.remote()) == ({"io": 2, "compute": 3}, 5)  # never above either limit
    assert all("-io" in name for name in names[:5]) and all("-compute" in name for name in names[5:])
    # .options(concurrency_group=...) moves one call to a group; a group the actor lacks is an error.
    assert "-io" in ember.get(actor.plain.options(concurrency_group="io").remote())
    assert "-io" not in ember.get(actor.plain.remote())
    with pytest.raises(ValueError, match="no concurrency group 'disk'"):
        ember.get(actor.plain.options(concurrency_group="disk").remote())


def test_async_actor_concurrency_groups(cluster):
    @ember.remote(concurrency_groups={"io": 2, "compute": 1})
    class AsyncGrouped:
        def __init__(self):
            self.release = asyncio.Event()
            self.running = {"io": 0, "compute": 0}
            self.peak = {"io": 0, "compute": 0}

        async def _hold(self, group):
            self.running[group] += 1
            self.peak[group] = max(self.peak[group], self.running[group])
            await self.release.wait()
            self.running[group] -= 1

        @ember.method(concurrency_group="io")
        async def io(self):
            await self._hold("io")

        @ember.method(concurrency_group="compute")
        async def compute(self):
            await self._hold("compute")

        async def peaks(self):
            return dict(self.peak)

        async def open(self):
            self.release.set()

    actor = AsyncGrouped.remote()
    refs = [actor.io.remote() for _ in range(4)] + [actor.compute.remote() for _ in range(3)]
    wait_for(lambda: ember.get(actor.peaks.remote()) == {"io": 2, "compute": 1}, message="both groups full")
    ember.get(actor.open.remote())
    ember.get(refs, timeout=60)
    assert ember.get(actor.peaks.remote()) == {"io": 2, "compute": 1}


# --- the state API and the timeline ----------------------------------------------------------------------
def test_task_records_are_bounded_and_fold_states():
    table = TaskSummary(records=3)
    for i in range(5):
        event = ["finished", bytes([i]) * 14, 10.0 + i, {"name": f"t{i}", "times": {"submitted": 1.0, "running": 2.0}}]
        table.apply_batch(msgpack.packb([event]))
    rows = table.rows()
    assert [row["name"] for row in rows] == ["t2", "t3", "t4"]
    assert table.dropped == 2 and table.state.summary()["finished"] == 5  # the counts keep every task
    assert rows[0]["state"] == "FINISHED" and rows[0]["running"] == 2.0 and rows[0]["finished"] == 12.0
    retry = ["running", bytes([4]) * 14, 20.0, {"node": b"n", "pid": 7, "worker": b"w"}]  # a retry runs again
    table.apply_batch(msgpack.packb([retry, ["finished", 5, 1.0, {}], "junk"]))  # ill-formed ones skipped
    last = table.rows()[-1]
    assert last["state"] == "RUNNING" and "finished" not in last and (last["pid"], last["worker"]) == (7, b"w")
    with pytest.raises(ValueError):
        table.apply_batch(b"\xc1 not msgpack")
    with pytest.raises(ValueError):
        TaskSummary(records=0)


def test_records_behind_a_long_queue_are_forgotten_without_scanning_it():
    table = TaskSummary(records=100)
    table.apply_batch(msgpack.packb([["submitted", i.to_bytes(14, "big"), 1.0, {"name": "q"}] for i in range(5_000)]))
    assert len(table.rows()) == 100 and table.dropped == 4_900
    assert table.state.summary()["pending"] == 5_000


def test_state_listing_with_filters(cluster):
    tag = uuid.uuid4().hex[:8]

    @ember.remote
    def work(fail):
        if fail:
            raise KeyError("no such key")
        return os.getpid()

    pids = ember.get([work.options(name=f"ok-{tag}").remote(False) for _ in range(3)])
    with pytest.raises(KeyError):
        ember.get(work.options(name=f"bad-{tag}").remote(True))
    wait_for(
        lambda: len(state.list_tasks(filters=[("name", "=", f"ok-{tag}"), ("state", "=", "FINISHED")])) == 3,
        message="the finished tasks to be listed",
    )
    failed = wait_for(lambda: state.list_tasks(filters=[("name", "=", f"bad-{tag}")], detail=True))
    assert failed[0].state == "FAILED" and "no such key" in failed[0].error_message
    assert failed[0].error_type == "KeyError" and failed[0].end_time_ms >= failed[0].start_time_ms
    finished = state.list_tasks(filters=[("name", "=", f"ok-{tag}")])
    assert {task.worker_pid for task in finished} <= set(pids)
    assert finished[0].creation_time_ms is None  # a detail-only field
    assert state.list_tasks(filters=[("name", "=", f"ok-{tag}")], limit=2).__len__() == 2
    assert not state.list_tasks(filters=[("name", "=", f"ok-{tag}"), ("state", "!=", "finished")])
    assert state.get_task(finished[0].task_id).name == f"ok-{tag}"
    with pytest.raises(ValueError, match="valid keys"):
        state.list_tasks(filters=[("colour", "=", "red")])
    with pytest.raises(ValueError, match="predicate"):
        state.list_tasks(filters=[("state", ">", "RUNNING")])

    actor = Grouped.options(name=f"grouped-{tag}").remote()
    ember.get(actor.plain.remote())
    actors = state.list_actors(filters=[("name", "=", f"grouped-{tag}")], detail=True)
    assert len(actors) == 1 and actors[0].class_name == "Grouped" and actors[0].state == "ALIVE"
    assert state.get_actor(actors[0].actor_id).pid == actors[0].pid
    ember.kill(actor)
    wait_for(lambda: state.get_actor(actors[0].actor_id).state == "DEAD", message="the actor to be listed dead")

    nodes = state.list_nodes(filters=[("state", "=", "ALIVE")])
    assert any(node.node_id == ember.get_runtime_context().get_node_id() for node in nodes)
    assert state.get_node(nodes[0].node_id).resources_total["CPU"] > 0
    job_id = ember.get_runtime_context().get_job_id()
    jobs = state.list_jobs(filters=[("job_id", "=", job_id)])
    assert len(jobs) == 1 and jobs[0].status == "RUNNING"

    kept = ember.put(np.zeros(10))
    objects = state.list_objects(filters=[("object_id", "=", kept.hex())])
    assert len(objects) == 1 and objects[0].object_size > 0 and objects[0].reference_type == "LOCAL_REFERENCE"

    group = ember.util.placement_group([{"CPU": 1}], name=f"pg-{tag}")
    ember.get(group.ready(), timeout=30)
    groups = state.list_placement_groups(filters=[("name", "=", f"pg-{tag}")], detail=True)
    assert groups[0].state == "CREATED" and groups[0].bundles[0]["unit_resources"] == {"CPU": 1}
    assert state.get_placement_group(groups[0].placement_group_id).name == f"pg-{tag}"
    ember.util.remove_placement_group(group)


def test_timeline_writes_one_complete_event_per_finished_task(cluster, tmp_path):
    tag = uuid.uuid4().hex[:8]

    @ember.remote
    def step(i):
        return i

    ember.get([step.options(name=f"step-{tag}").remote(i) for i in range(6)])
    wait_for(
        lambda: len(state.list_tasks(filters=[("name", "=", f"step-{tag}"), ("state", "=", "FINISHED")])) == 6,
        message="the tasks to be listed finished",
    )
    path = tmp_path / "trace.json"
    assert ember.timeline(str(path)) is None
    events = [event for event in json.loads(path.read_text()) if event["name"] == f"step-{tag}"]
    assert len(events) == 6
    assert len({event["args"]["task_id"] for event in events}) == 6
    for event in events:
        assert event["ph"] == "X" and event["cat"] == "task"
        assert event["dur"] >= 0 and event["ts"] > 0
        assert event["pid"].startswith("Node ") and event["tid"].startswith("Worker ")
    assert len([e for e in ember.timeline() if e["name"] == f"step-{tag}"]) == 6


def test_dynamic_generator_passed_to_a_task(cluster):
    @ember.remote(num_returns="dynamic")
    def parts():
        yield "a"
        yield np.ones(200_000)

    @ember.remote
    def consume(generator):
        values = ember.get(list(generator))
        return values[0], float(values[1].sum())

    outer = parts.remote()
    assert ember.get(consume.remote(outer)) == ("a", 200_000.0)  # the ref, resolved to its generator
    assert ember.get(consume.remote(ember.get(outer))) == ("a", 200_000.0)  # the generator itself


def test_enable_task_events_false_on_a_task(cluster):
    tag = uuid.uuid4().hex[:8]

    @ember.remote
    def noop():
        return None

    ember.get(noop.options(name=f"hidden-{tag}", enable_task_events=False).remote())
    ember.get(noop.options(name=f"shown-{tag}").remote())
    wait_for(lambda: state.list_tasks(filters=[("name", "=", f"shown-{tag}")]), message="the shown task's events")
    assert state.list_tasks(filters=[("name", "=", f"hidden-{tag}")]) == []
