"""The dashboard process: its port choice, its JSON endpoints, and its token check, over real HTTP."""

import socket

import httpx
import psutil
import pytest

import ember
from ember import dashboard
from ember.dashboard.server import token_allowed
from ember.runtime import transport
from tests.conftest import wait_for


def test_token_check():
    assert token_allowed({}, {}, None)
    assert not token_allowed({}, {}, "s3cret")
    assert token_allowed({"authorization": "Bearer s3cret"}, {}, "s3cret")
    assert token_allowed({"x-ember-token": "s3cret"}, {}, "s3cret")
    assert token_allowed({}, {"ember_token": "s3cret"}, "s3cret")
    assert not token_allowed({"authorization": "Bearer wrong"}, {"ember_token": ""}, "s3cret")


def test_port_choice(monkeypatch):
    monkeypatch.delenv(dashboard.PORT_VARIABLE, raising=False)
    assert dashboard.configured_port(None) == 8265
    monkeypatch.setenv(dashboard.PORT_VARIABLE, "0")
    assert dashboard.configured_port(None) == 0
    assert dashboard.configured_port(9000) == 9000
    for bad in (70000, "80", True):
        with pytest.raises(ValueError):
            dashboard.configured_port(bad)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        sock, note = dashboard.bind("127.0.0.1", port)
        with sock:
            assert sock.getsockname()[1] != port and f"port {port} is taken" in note


def test_cluster_endpoint_and_index(cluster):
    url = cluster.dashboard_url
    assert url.startswith("http://127.0.0.1:")  # the shared cluster's head is on loopback, so is its dashboard
    body = httpx.get(f"{url}/api/cluster", timeout=30).json()
    assert body["resources"]["total"]["CPU"] == 4 and body["resources"]["total"]["custom"] == 4
    assert [node["alive"] for node in body["nodes"]] == [True]
    assert set(body["tasks"]["counts"]) >= {"finished", "running"}
    ember.get(ember.remote(lambda: 1).remote())
    wait_for(
        lambda: httpx.get(f"{url}/api/cluster", timeout=30).json()["tasks"]["counts"]["finished"] > 0,
        message="the finished task in the summary",
    )
    page = httpx.get(url, timeout=30)
    assert page.status_code == 200 and "/api/jobs/" in page.text
    assert httpx.get(f"{url}/api/jobs/nope", timeout=30).status_code == 404


def _network_address() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


def test_networked_dashboard_needs_the_secret(cluster, tmp_path):
    host = _network_address()
    if host is None:
        pytest.skip("this machine has no network interface besides loopback")
    (tmp_path / "logs").mkdir()
    process, url = dashboard.start(cluster.address, host, 0, str(tmp_path))
    try:
        token = transport.current_token()
        refused = wait_for(lambda: _get(f"{url}/api/cluster"), timeout=30, message="the dashboard to answer")
        assert refused.status_code == 401
        assert _get(f"{url}/api/cluster", headers={"Authorization": "Bearer wrong"}).status_code == 401
        allowed = _get(f"{url}/api/cluster", headers={"Authorization": f"Bearer {token}"})
        assert allowed.status_code == 200 and allowed.json()["resources"]["total"]["CPU"] == 4
        assert _get(f"{url}/api/jobs/", cookies={"ember_token": token}).status_code == 200
        # The log tail's WebSocket is behind the same check.
        import asyncio

        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        async def tail(headers):
            try:
                async with connect(f"ws{url[4:]}/api/jobs/nothing/logs/tail", additional_headers=headers) as ws:
                    await ws.recv()
            except InvalidStatus as error:
                return error.response.status_code
            except ConnectionClosed as error:
                return error.rcvd.code

        assert asyncio.run(tail({})) == 403
        assert asyncio.run(tail({"Authorization": f"Bearer {token}"})) == 4404
    finally:
        dashboard.stop(process)
    assert process.returncode is not None


def _get(url, **kwargs):
    try:
        return httpx.get(url, timeout=30, **kwargs)
    except httpx.ConnectError:
        return None
