"""Serve under faults and load: SIGKILLed replicas, failing health checks, autoscaling."""

import os
import signal
import time

import pytest
from conftest import wait_for

import ember

serve = pytest.importorskip("ember.serve")

CPU0 = {"num_cpus": 0}


def _deployment(app: str, name: str):
    return serve.status().applications[app].deployments[name]


def _pids(app: str, name: str) -> set:
    return {replica["pid"] for replica in _deployment(app, name).replicas.values()}


@serve.deployment(ray_actor_options=CPU0, num_replicas=2, max_ongoing_requests=1)
class Blocker:
    def __call__(self, path):
        deadline = time.monotonic() + 60
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        return os.getpid()


def test_sigkilled_replica_is_replaced_and_queued_requests_go_elsewhere(serve_instance, tmp_path):
    handle = serve.run(Blocker.bind(), name="kill", route_prefix=None)
    wait_for(lambda: len(_pids("kill", "Blocker")) == 2, message="two replicas")
    release = str(tmp_path / "release")
    running = [handle.remote(release), handle.remote(release)]  # one on each replica (max_ongoing_requests=1)
    wait_for(
        lambda: sum(r["ongoing"] for r in _deployment("kill", "Blocker").replicas.values()) == 2,
        message="both replicas busy",
    )
    queued = [handle.remote(release) for _ in range(4)]  # wait in the router: not started anywhere
    victim = sorted(_pids("kill", "Blocker"))[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(_pids("kill", "Blocker") - {victim}) == 2, message="a replacement replica")
    open(release, "w").close()
    outcomes = []
    for response in running:
        try:
            outcomes.append(response.result(timeout_s=60))
        except ember.exceptions.ActorDiedError:
            outcomes.append("died")
    assert outcomes.count("died") == 1  # the request running on the killed replica
    served = [response.result(timeout_s=60) for response in queued]
    assert victim not in served and len(served) == 4
    wait_for(lambda: serve.status().applications["kill"].status == "RUNNING", message="the app to recover")
    assert _deployment("kill", "Blocker").replica_states == {"RUNNING": 2}


@serve.deployment(ray_actor_options=CPU0, health_check_period_s=0.2, health_check_timeout_s=5)
class Fragile:
    def __init__(self, marker):
        self.marker = marker

    def check_health(self):
        if os.path.exists(self.marker) and open(self.marker).read() == str(os.getpid()):
            raise RuntimeError("unhealthy on purpose")

    def __call__(self):
        return os.getpid()


def test_failed_health_check_replaces_the_replica(serve_instance, tmp_path):
    marker = tmp_path / "sick"
    handle = serve.run(Fragile.bind(str(marker)), name="health", route_prefix=None)
    first = handle.remote().result(timeout_s=30)
    marker.write_text(str(first))
    wait_for(
        lambda: _pids("health", "Fragile") and first not in _pids("health", "Fragile"),
        message="the unhealthy replica to be replaced",
    )
    wait_for(lambda: serve.status().applications["health"].status == "RUNNING", message="the app to recover")
    assert handle.remote().result(timeout_s=30) != first


@serve.deployment(
    ray_actor_options=CPU0,
    max_ongoing_requests=2,
    autoscaling_config={
        "min_replicas": 1,
        "max_replicas": 3,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 0,
        "downscale_delay_s": 0.5,
        "look_back_period_s": 0.5,
        "metrics_interval_s": 0.5,
    },
)
class Elastic:
    def __call__(self, path):
        deadline = time.monotonic() + 60
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        return os.getpid()


def test_autoscaling_follows_ongoing_requests(serve_instance, tmp_path):
    handle = serve.run(Elastic.bind(), name="auto", route_prefix=None)
    assert _deployment("auto", "Elastic").target_replicas == 1
    release = str(tmp_path / "release")
    load = [handle.remote(release) for _ in range(6)]
    wait_for(
        lambda: _deployment("auto", "Elastic").replica_states == {"RUNNING": 3},
        timeout=60,
        message="three replicas under load",
    )
    assert _deployment("auto", "Elastic").target_replicas == 3  # max_replicas bounds it
    open(release, "w").close()
    pids = {response.result(timeout_s=60) for response in load}
    assert len(pids) >= 2  # the queued requests reached the new replicas
    wait_for(
        lambda: _deployment("auto", "Elastic").replica_states == {"RUNNING": 1},
        timeout=60,
        message="back to min_replicas when idle",
    )
    assert serve.status().applications["auto"].status == "RUNNING"


@serve.deployment(ray_actor_options=CPU0, num_replicas=2, max_ongoing_requests=1)
class HttpBlocker:
    def __call__(self, request):
        path = request.query_params["release"]
        deadline = time.monotonic() + 60
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        return os.getpid()


def test_sigkilled_replica_behind_http_queued_requests_go_elsewhere(serve_instance, tmp_path):
    """The proxy's router, like a handle's: the request running on the killed replica gets a 500
    naming the death; those still queued in the proxy are served by the others."""
    import concurrent.futures

    httpx = pytest.importorskip("httpx")
    serve.run(HttpBlocker.bind(), name="httpkill", route_prefix="/kill")
    wait_for(lambda: len(_pids("httpkill", "HttpBlocker")) == 2, message="two replicas")
    release = str(tmp_path / "release")

    def get():
        reply = httpx.get(f"{serve_instance}/kill", params={"release": release}, timeout=60)
        return reply.status_code, reply.text

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        running = [pool.submit(get) for _ in range(2)]
        wait_for(
            lambda: sum(r["ongoing"] for r in _deployment("httpkill", "HttpBlocker").replicas.values()) == 2,
            message="both replicas busy",
        )
        queued = [pool.submit(get) for _ in range(4)]
        wait_for(lambda: _deployment("httpkill", "HttpBlocker").queued == 4, message="four queued in the proxy")
        victim = sorted(_pids("httpkill", "HttpBlocker"))[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(_pids("httpkill", "HttpBlocker") - {victim}) == 2, message="a replacement replica")
        open(release, "w").close()
        outcomes = [future.result(timeout=60) for future in running]
        served = [future.result(timeout=60) for future in queued]
    assert sorted(status for status, _ in outcomes) == [200, 500]
    assert "died" in [text for status, text in outcomes if status == 500][0].lower()
    assert all(status == 200 for status, _ in served), served
    assert str(victim) not in {text for _, text in served}
