"""The HTTP proxy with a real client: routing, errors as status codes, bodies, streaming, FastAPI."""

import json
import os
import socket
import time

import pytest
from conftest import wait_for

serve = pytest.importorskip("ember.serve")
httpx = pytest.importorskip("httpx")

CPU0 = {"num_cpus": 0}


@serve.deployment(ray_actor_options=CPU0)
class Echo:
    async def __call__(self, request):
        body = await request.body()
        if request.query_params.get("fail"):
            raise ValueError("you asked for it")
        return {
            "method": request.method,
            "path": request.url.path,
            "root_path": request.scope.get("root_path"),
            "query": dict(request.query_params),
            "size": len(body),
            "header": request.headers.get("x-test"),
        }


def test_routes_methods_bodies_and_errors(serve_instance):
    serve.run(Echo.bind(), name="echo", route_prefix="/echo")
    with httpx.Client(base_url=serve_instance, timeout=30) as client:
        reply = client.post("/echo/a/b?x=1", content=b"12345", headers={"x-test": "yes"})
        assert reply.status_code == 200
        assert reply.json() == {
            "method": "POST",
            "path": "/echo/a/b",
            "root_path": "/echo",
            "query": {"x": "1"},
            "size": 5,
            "header": "yes",
        }
        missing = client.get("/elsewhere")
        assert missing.status_code == 404 and "/elsewhere" in missing.text
        failed = client.get("/echo?fail=1")
        assert failed.status_code == 500 and "you asked for it" in failed.text
        assert client.get("/echo").status_code == 200  # the replica serves on after a user error


def test_oversized_body_malformed_http_and_the_proxy_lives_on(cluster, tmp_path):
    # A proxy with a small body limit of its own, in a driver of its own (a separate cluster).
    from conftest import run_driver

    code = """
        import socket, httpx, ember
        from ember import serve
        ember.init(num_cpus=2)
        serve.start(http_options={"port": 0, "max_body_size": 1000})
        address = serve.api._http_address()

        @serve.deployment(ray_actor_options={"num_cpus": 0})
        async def size(request):
            return len(await request.body())

        serve.run(size.bind(), route_prefix="/size")
        with httpx.Client(base_url=address, timeout=30) as client:
            print("small", client.post("/size", content=b"x" * 1000).text)
            big = client.post("/size", content=b"x" * 1001)
            print("big", big.status_code, big.text)
            chunks = (b"x" * 600 for _ in range(3))  # chunked: no Content-Length to check first
            print("chunked", client.post("/size", content=chunks).status_code)
        host, port = address[7:].split(":")
        bad_length = b"GET / HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: nope\\r\\n\\r\\n"
        for garbage in [b"NOT HTTP AT ALL\\r\\n\\r\\n", bad_length]:
            with socket.create_connection((host, int(port))) as raw:
                raw.sendall(garbage)
                print("garbage", raw.recv(100).split(b"\\r\\n")[0].decode())
        print("after", httpx.post(address + "/size", content=b"abc").text)
        serve.shutdown()
        ember.shutdown()
    """
    out = run_driver(code, timeout=120).stdout
    assert "small 1000" in out
    assert "big 413" in out and "too large" in out
    assert "chunked 413" in out
    assert out.count("garbage HTTP/1.1 400") == 2
    assert "after 3" in out


@serve.deployment(ray_actor_options=CPU0, max_ongoing_requests=1, max_queued_requests=1)
class Held:
    def __call__(self, request):
        path = request.query_params["path"]
        while not os.path.exists(path):
            time.sleep(0.01)
        return "released"


def test_full_queue_answers_503(serve_instance, tmp_path):
    import concurrent.futures

    serve.run(Held.bind(), name="held", route_prefix="/held")
    release = tmp_path / "go"
    url = f"{serve_instance}/held?path={release}"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(httpx.get, url, timeout=60)
        wait_for(lambda: _ongoing() == 1, message="the first request to run")
        second = pool.submit(httpx.get, url, timeout=60)
        wait_for(lambda: _queued(serve_instance) == 1, message="the second request to queue")
        refused = httpx.get(url, timeout=30)
        assert refused.status_code == 503 and "max_queued_requests" in refused.text
        release.touch()
        assert first.result().text == second.result().text == "released"


def _ongoing() -> int:
    replicas = serve.status().applications["held"].deployments["Held"].replicas
    return sum(replica["ongoing"] for replica in replicas.values())


def _queued(address) -> int:
    # The proxy's router reports its queue to the controller twice a second.
    return serve.status().applications["held"].deployments["Held"].queued


@serve.deployment(ray_actor_options=CPU0)
class Streamer:
    def __call__(self, request):
        from starlette.responses import StreamingResponse

        n = int(request.query_params["n"])
        gate = request.query_params["gate"]

        def numbers():
            yield "0\n"
            # The rest only once the client has read the first line: it must have arrived alone.
            deadline = time.monotonic() + 20
            while not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.01)
            for i in range(1, n):
                yield f"{i}\n" if os.path.exists(gate) else "late\n"

        return StreamingResponse(numbers(), media_type="text/plain")


def test_streaming_response_arrives_in_pieces(serve_instance, tmp_path):
    serve.run(Streamer.bind(), name="stream", route_prefix="/stream")
    lines = []
    gate = tmp_path / "gate"
    with httpx.stream("GET", f"{serve_instance}/stream", params={"n": 5, "gate": str(gate)}, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            lines.append(line)
            gate.touch()
    assert lines == ["0", "1", "2", "3", "4"]


def test_fastapi_ingress(serve_instance):
    fastapi = pytest.importorskip("fastapi")
    app = fastapi.FastAPI()

    @serve.deployment(ray_actor_options=CPU0)
    @serve.ingress(app)
    class Api:
        def __init__(self, prefix: str):
            self.prefix = prefix

        @app.get("/hello/{name}")
        def hello(self, name: str, times: int = 1):
            return {"text": " ".join([f"{self.prefix} {name}"] * times)}

        @app.post("/items")
        async def create(self, item: dict):
            return {"stored": item, "by": self.prefix}

    serve.run(Api.bind("hi"), name="api", route_prefix="/api")
    with httpx.Client(base_url=serve_instance, timeout=30) as client:
        assert client.get("/api/hello/bob", params={"times": 2}).json() == {"text": "hi bob hi bob"}
        assert client.post("/api/items", json={"a": 1}).json() == {"stored": {"a": 1}, "by": "hi"}
        invalid = client.get("/api/hello/bob", params={"times": "many"})
        assert invalid.status_code == 422 and "times" in json.dumps(invalid.json())
        assert client.get("/api/nothing").status_code == 404


def test_two_apps_and_multiplexed_header(serve_instance):
    @serve.deployment(ray_actor_options=CPU0)
    class Which:
        def __call__(self, request):
            return f"{serve.get_replica_context().app_name}:{serve.get_multiplexed_model_id()}"

    serve.run(Which.bind(), name="one", route_prefix="/one")
    serve.run(Which.bind(), name="two", route_prefix="/two")
    with pytest.raises(ValueError, match="being used"):
        serve.run(Which.bind(), name="three", route_prefix="/one")
    with httpx.Client(base_url=serve_instance, timeout=30) as client:
        assert client.get("/one").text == "one:"
        assert client.get("/two/x", headers={"serve_multiplexed_model_id": "m7"}).text == "two:m7"
        serve.delete("one")
        wait_for(lambda: client.get("/one").status_code == 404, message="the route to go")
        assert client.get("/two").text == "two:"


def test_proxy_port_is_configurable(serve_instance):
    host, port = serve_instance[len("http://") :].split(":")
    assert host == "127.0.0.1"
    with socket.create_connection((host, int(port)), timeout=5):
        pass
