"""ember.serve through handles on the real runtime: deploy, call, compose, reconfigure, redeploy,
batch, multiplex, stream, status, delete."""

import asyncio
import gc
import os
import threading
import time

import pytest
from conftest import wait_for

serve = pytest.importorskip("ember.serve")

CPU0 = {"num_cpus": 0}


@serve.deployment(ray_actor_options=CPU0)
class Greeter:
    def __init__(self, greeting: str):
        self.greeting = greeting

    def __call__(self, name):
        return f"{self.greeting}, {name}"

    def shout(self, name):
        return f"{self.greeting.upper()}, {name.upper()}!"

    def fail(self):
        raise KeyError("no such thing")

    def context(self):
        ctx = serve.get_replica_context()
        return ctx.app_name, ctx.deployment, ctx.replica_tag, os.getpid()


def test_class_deployment_methods_and_errors(serve_instance):
    handle = serve.run(Greeter.bind("Hello"), name="greet", route_prefix=None)
    assert handle.remote("Ann").result(timeout_s=30) == "Hello, Ann"
    assert handle.shout.remote("bo").result() == "HELLO, BO!"
    assert handle.options(method_name="shout").remote("x").result() == "HELLO, X!"
    with pytest.raises(KeyError, match="no such thing"):  # the user's exception type, through a handle
        handle.fail.remote().result()
    app, deployment, replica, pid = handle.context.remote().result()
    assert (app, deployment) == ("greet", "Greeter") and replica.startswith("Greeter#") and pid != os.getpid()
    status = serve.status().applications["greet"]
    assert status.status == "RUNNING" and status.deployments["Greeter"].status == "HEALTHY"
    assert status.deployments["Greeter"].replica_states == {"RUNNING": 1}
    assert serve.get_app_handle("greet").remote("Cy").result() == "Hello, Cy"
    assert serve.get_deployment_handle("Greeter", "greet").shout.remote("z").result() == "HELLO, Z!"
    with pytest.raises(serve.exceptions.RayServeException):
        serve.get_app_handle("nope")
    with pytest.raises(serve.exceptions.RayServeException):
        serve.get_replica_context()  # not in a replica


def test_function_deployment_await_and_bad_arguments(serve_instance):
    @serve.deployment(ray_actor_options=CPU0)
    def double(x):
        return 2 * x

    handle = serve.run(double.bind(), name="fn", route_prefix=None)

    async def main():
        return await asyncio.gather(*[handle.remote(i) for i in range(5)])

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]
    with pytest.raises(TypeError):
        double.bind(1)
    with pytest.raises(TypeError):
        serve.run(double)
    with pytest.raises(ValueError):
        serve.deployment(num_replicas=-1)(double.func_or_class)
    with pytest.raises(ValueError):
        serve.deployment(max_ongoing_requests=0)
    with pytest.raises(ValueError):
        double.options(bogus=1)


@serve.deployment(ray_actor_options=CPU0)
class Adder:
    def __init__(self, amount):
        self.amount = amount

    def __call__(self, x):
        return x + self.amount


@serve.deployment(ray_actor_options=CPU0)
class Pipeline:
    def __init__(self, first, second):
        self.first, self.second = first, second

    async def __call__(self, x):
        # A response passed straight into the next call: the second replica gets the value.
        return await self.second.remote(self.first.remote(x))

    def types(self):
        return type(self.first).__name__


def test_composition_passes_handles_and_responses(serve_instance):
    app = Pipeline.bind(Adder.options(name="plus1").bind(1), Adder.options(name="plus10").bind(10))
    handle = serve.run(app, name="compose", route_prefix=None)
    assert handle.remote(5).result(timeout_s=30) == 16
    assert handle.types.remote().result() == "DeploymentHandle"
    assert set(serve.status().applications["compose"].deployments) == {"Pipeline", "plus1", "plus10"}
    # From the driver too: a response passed as an argument, not waited for here.
    plus1 = serve.get_deployment_handle("plus1", "compose")
    plus10 = serve.get_deployment_handle("plus10", "compose")
    assert plus10.remote(plus1.remote(0)).result() == 11
    with pytest.raises(serve.exceptions.RayServeException, match="two different deployments"):
        serve.run(Pipeline.bind(Adder.bind(1), Adder.bind(2)), name="clash", route_prefix=None)


@serve.deployment(ray_actor_options=CPU0, user_config={"factor": 2})
class Scaler:
    def __init__(self):
        self.factor = None
        self.pid = os.getpid()

    def reconfigure(self, config):
        self.factor = config["factor"]

    def __call__(self, x):
        return x * self.factor, self.pid


def test_user_config_reconfigures_in_place_and_new_code_rolls(serve_instance):
    handle = serve.run(Scaler.bind(), name="cfg", route_prefix=None)
    value, pid = handle.remote(3).result(timeout_s=30)
    assert value == 6
    serve.run(Scaler.options(user_config={"factor": 5}).bind(), name="cfg", route_prefix=None)
    wait_for(lambda: handle.remote(3).result()[0] == 15, message="reconfigure")
    assert handle.remote(1).result()[1] == pid  # the same replica: reconfigured, not replaced

    # New code: a rolling update. Calls made all along keep succeeding.
    failures, results, stop = [], [], threading.Event()

    def load():
        while not stop.is_set():
            try:
                results.append(handle.remote(1).result(timeout_s=30))
            except Exception as error:  # noqa: BLE001 - any failure is what the test looks for
                failures.append(error)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        serve.run(Scaler.options(version="2", user_config={"factor": 7}).bind(), name="cfg", route_prefix=None)
        wait_for(lambda: results and results[-1][0] == 7, message="the new version to serve")
    finally:
        stop.set()
        thread.join()
    assert not failures
    assert results[-1][1] != pid


@serve.deployment(ray_actor_options=CPU0, max_ongoing_requests=2, num_replicas=2)
class Slow:
    def __init__(self):
        self.running = 0
        self.peak = 0
        self.lock = threading.Lock()

    def __call__(self, seconds):
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(seconds)
        with self.lock:
            self.running -= 1
        return os.getpid()

    def peak_seen(self):
        return self.peak


def test_requests_spread_over_replicas_within_max_ongoing(serve_instance):
    handle = serve.run(Slow.bind(), name="slow", route_prefix=None)
    responses = [handle.remote(0.2) for _ in range(12)]
    pids = [r.result(timeout_s=60) for r in responses]
    assert len(set(pids)) == 2  # both replicas served
    peaks = {handle.peak_seen.remote().result() for _ in range(8)}
    assert max(peaks) <= 2
    status = serve.status().applications["slow"].deployments["Slow"]
    assert status.replica_states == {"RUNNING": 2}


@serve.deployment(ray_actor_options=CPU0, max_ongoing_requests=1, max_queued_requests=2)
class Gate:
    def __call__(self, path):
        while not os.path.exists(path):
            time.sleep(0.01)
        return "done"


def test_max_queued_requests_refuses_with_backpressure(serve_instance, tmp_path):
    handle = serve.run(Gate.bind(), name="gate", route_prefix=None)
    release = str(tmp_path / "release")
    running = handle.remote(release)
    wait_for(lambda: serve.status().applications["gate"].deployments["Gate"].replicas, message="replica")
    queued = [handle.remote(release), handle.remote(release)]
    with pytest.raises(serve.exceptions.BackPressureError, match="max_queued_requests is 2"):
        handle.remote(release)
    open(release, "w").close()
    assert [r.result(timeout_s=30) for r in [running, *queued]] == ["done"] * 3


@serve.deployment(ray_actor_options=CPU0)
class Batcher:
    def __init__(self):
        self.sizes = []

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.5)
    async def __call__(self, items):
        self.sizes.append(len(items))
        return [item * 10 for item in items]

    def batch_sizes(self):
        return self.sizes


def test_batch_collects_concurrent_calls(serve_instance):
    handle = serve.run(Batcher.bind(), name="batch", route_prefix=None)
    responses = [handle.remote(i) for i in range(8)]
    assert [r.result(timeout_s=30) for r in responses] == [i * 10 for i in range(8)]
    sizes = handle.batch_sizes.remote().result()
    assert sum(sizes) == 8 and max(sizes) == 4 and len(sizes) < 8
    with pytest.raises(ValueError):
        serve.batch(max_batch_size=0)


@serve.deployment(ray_actor_options=CPU0)
class Models:
    def __init__(self):
        self.loads = []

    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id):
        self.loads.append(model_id)
        return f"model-{model_id}"

    async def __call__(self, x):
        model = await self.get_model(serve.get_multiplexed_model_id())
        return model, x

    def loaded(self):
        return self.loads

    def count(self, n):
        for i in range(n):
            yield i


def test_multiplexed_models_and_streaming(serve_instance):
    handle = serve.run(Models.bind(), name="mux", route_prefix=None)
    for model_id in ["a", "b", "a", "c", "a"]:
        assert handle.options(multiplexed_model_id=model_id).remote(1).result(timeout_s=30) == (f"model-{model_id}", 1)
    # a, b loaded; a reused; c evicts b (a was used last); a still loaded.
    assert handle.loaded.remote().result() == ["a", "b", "c"]
    assert list(handle.options(stream=True).count.remote(4)) == [0, 1, 2, 3]

    async def consume():
        return [x async for x in handle.options(stream=True, method_name="count").remote(3)]

    assert asyncio.run(consume()) == [0, 1, 2]
    # A stream dropped half read gives its replica slot back (its finalizer may run inside the
    # garbage collector, on a thread holding the router's lock: it defers to the hub's loop).
    abandoned = handle.options(stream=True).count.remote(4)
    assert next(abandoned) == 0
    router = abandoned._router
    del abandoned
    gc.collect()
    wait_for(lambda: all(slot.inflight == 0 for slot in router.slots.values()), timeout=10)


def test_failed_constructor_fails_the_deploy_and_delete_cleans_up(serve_instance):
    @serve.deployment(ray_actor_options=CPU0)
    class Broken:
        def __init__(self):
            raise ZeroDivisionError("broken constructor")

    with pytest.raises(RuntimeError, match="broken constructor"):
        serve.run(Broken.bind(), name="broken", route_prefix=None)
    assert serve.status().applications["broken"].status == "DEPLOY_FAILED"
    serve.delete("broken")
    assert "broken" not in serve.status().applications
    handle = serve.run(Greeter.bind("Hi"), name="short", route_prefix=None)
    assert handle.remote("x").result(timeout_s=30) == "Hi, x"
    serve.delete("short")
    with pytest.raises(serve.exceptions.DeploymentUnavailableError):
        handle.remote("x").result(timeout_s=30)


def test_monitor_follows_pushed_status(serve_instance):
    from ember.serve.monitor import ServeMonitor, status_html, status_lines

    handle = serve.run(Greeter.bind("Yo"), name="watched", route_prefix=None)
    follower = ServeMonitor(widget=False)
    try:
        for _ in range(20):
            handle.remote("x").result(timeout_s=30)
        wait_for(
            lambda: (
                follower.status.get("applications", {})
                .get("watched", {})
                .get("deployments", {})
                .get("Greeter", {})
                .get("requests_per_s", 0)
                > 0
            ),
            message="a pushed status with the requests",
        )
        page = status_html(follower.status)
        assert "watched (RUNNING)" in page and "Greeter" in page and "HEALTHY" in page
        line = next(line for line in status_lines(follower.status) if "watched" in line)
        assert "replicas 1/1" in line and "req/s" in line
    finally:
        follower.close()
    pytest.importorskip("ipywidgets")
    shown = serve.monitor()
    try:
        wait_for(lambda: "watched" in shown.table.value, message="the widget's table")
    finally:
        shown.close()
