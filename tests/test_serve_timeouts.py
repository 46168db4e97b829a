"""HTTP request time limits (``request_timeout_s``, Ray's ``x-request-timeout-seconds`` header) and
what a stopping replica waits for, against a real proxy and real replicas."""

import asyncio
import os
import threading

import pytest
from conftest import wait_for

serve = pytest.importorskip("ember.serve")
httpx = pytest.importorskip("httpx")

from ember.serve.proxy import request_timeout  # noqa: E402

CPU0 = {"num_cpus": 0}
TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def timed_serve(cluster):
    """Serve with ``request_timeout_s`` set, for this module; its proxy's address."""
    from ember.util.state import list_actors

    serve.start(http_options={"host": "127.0.0.1", "port": 0, "request_timeout_s": TIMEOUT_S})
    yield serve.api._http_address()
    serve.shutdown()
    wait_for(
        lambda: not [a for a in list_actors() if a.class_name in ("ServeReplica", "ProxyActor") and a.state != "DEAD"],
        message="Serve's actors to be gone",
    )


@serve.deployment(ray_actor_options=CPU0, max_ongoing_requests=1)
class Slow:
    """Waits until the file named by ``?gate=`` exists; writes ``?mark=`` if it is cancelled first."""

    def __init__(self):
        self.calls = 0

    async def __call__(self, request):
        self.calls += 1
        gate, mark = request.query_params.get("gate"), request.query_params.get("mark")
        try:
            while gate and not os.path.exists(gate):
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if mark:
                open(mark, "w").close()
            raise
        return {"calls": self.calls}


def _ongoing(app: str) -> int:
    return sum(r["ongoing"] for r in serve.status().applications[app].deployments["Slow"].replicas.values())


def test_timeout_option_and_header_parsing():
    assert request_timeout({}, None) is None
    assert request_timeout({}, 2.5) == 2.5
    assert request_timeout({b"x-request-timeout-seconds": b"0.5"}, 2.5) == 0.5
    assert request_timeout({b"x-request-timeout-seconds": b"0"}, 2.5) is None  # Ray's: no limit
    assert request_timeout({b"x-request-timeout-seconds": b"soon"}, 2.5) == 2.5


def test_a_running_request_past_its_time_gets_408_and_is_cancelled_on_its_replica(timed_serve, tmp_path):
    serve.run(Slow.bind(), name="slow", route_prefix="/slow")
    mark = tmp_path / "cancelled"
    with httpx.Client(base_url=timed_serve, timeout=30) as client:
        reply = client.get("/slow", params={"gate": str(tmp_path / "never"), "mark": str(mark)})
        assert reply.status_code == 408
        assert f"timed out after {TIMEOUT_S}s" in reply.text
        wait_for(mark.exists, message="the replica to see the cancellation")
        # The replica's only slot (max_ongoing_requests=1) is free again.
        assert client.get("/slow").json() == {"calls": 2}
        # The header overrides the option: 0 lifts the limit, so this one outlasts it.
        gate = tmp_path / "gate"
        threading.Timer(TIMEOUT_S * 2, gate.touch).start()
        reply = client.get("/slow", params={"gate": str(gate)}, headers={"x-request-timeout-seconds": "0"})
        assert reply.status_code == 200


def test_a_queued_request_past_its_time_gets_408_and_never_runs(timed_serve, tmp_path):
    serve.run(Slow.bind(), name="queue", route_prefix="/queue")
    gate = tmp_path / "gate"
    with httpx.Client(base_url=timed_serve, timeout=30) as client:
        holder = {}
        busy = threading.Thread(
            target=lambda: holder.update(
                reply=client.get("/queue", params={"gate": str(gate)}, headers={"x-request-timeout-seconds": "30"})
            )
        )
        busy.start()
        wait_for(lambda: _ongoing("queue") == 1, message="the replica to be busy")
        # The only slot is taken: this one waits in the proxy's router, then runs out of time there.
        reply = client.get("/queue")
        assert reply.status_code == 408
        gate.touch()
        busy.join(30)
        assert holder["reply"].json() == {"calls": 1}
        assert client.get("/queue").json() == {"calls": 2}  # the timed-out request never ran


def test_stopping_replica_waits_for_its_ongoing_request_then_a_quiet_moment():
    """The replica's drain, on a plain asyncio loop: no actor, no sockets."""
    import cloudpickle

    from ember.serve import context
    from ember.serve.replica import ServeReplica

    class Model:
        async def __call__(self, release):
            await release.wait()
            return "done"

    async def scenario():
        replica = ServeReplica("app", "Model", "r1", cloudpickle.dumps(Model), (), {}, 2)
        release = asyncio.Event()
        request = asyncio.ensure_future(replica.handle_request({}, release))
        await asyncio.sleep(0)
        stopping = asyncio.ensure_future(replica.prepare_for_shutdown(30, 0.05))
        waiter = asyncio.ensure_future(replica.wait_until_stopped())
        await asyncio.sleep(0.2)
        assert not stopping.done() and not waiter.done()  # a request is still ongoing
        release.set()
        assert await request == "done"
        await asyncio.wait_for(stopping, 10)
        await asyncio.wait_for(waiter, 1)
        assert replica.ongoing == 0

    try:
        asyncio.run(scenario())
    finally:
        context.set_replica_context(None)  # the replica set this process's context: undo it


def test_streaming_http_response_is_claimed_by_key_or_dropped_when_unclaimed(monkeypatch):
    """A whole response comes back in one plain call; a streaming one gives its first piece and a key
    for the rest, and one nobody claims stops counting as ongoing. Plain asyncio: no actor."""
    import cloudpickle

    from ember.serve import context, replica

    class Model:
        def __call__(self, request):
            from starlette.responses import PlainTextResponse, StreamingResponse

            if request.query_params.get("stream"):
                return StreamingResponse(iter(["a", "b", "c"]))
            return PlainTextResponse("whole")

    def scope(query: bytes) -> dict:
        return {"type": "http", "method": "GET", "path": "/", "query_string": query, "headers": []}

    async def scenario():
        monkeypatch.setattr(replica, "STREAM_CLAIM_TIMEOUT_S", 0.1)
        served = replica.ServeReplica("app", "Model", "r1", cloudpickle.dumps(Model), (), {}, 2)
        status, _, body, key = await served.handle_http({}, scope(b""), b"")
        assert (status, body, key, served.ongoing) == (200, b"whole", None, 0)

        status, _, first, key = await served.handle_http({}, scope(b"stream=1"), b"")
        assert status == 200 and key is not None and served.ongoing == 1
        rest = [chunk async for chunk in served.stream_http(key)]
        assert first + b"".join(rest) == b"abc" and served.ongoing == 0

        _, _, _, key = await served.handle_http({}, scope(b"stream=1"), b"")
        assert served.ongoing == 1
        await asyncio.sleep(0.3)  # nobody claims it
        assert served.ongoing == 0 and key not in served.open_streams

    try:
        asyncio.run(scenario())
    finally:
        context.set_replica_context(None)
