"""Ember's autoscaler: extra node managers on demand, and Ray's ``request_resources``.

``ember start --head --autoscale max_workers=N,idle_timeout_s=S`` runs the monitor
(:mod:`ember.autoscaler.monitor`) next to the head; it applies the policy in
:mod:`ember.autoscaler.policy` to the head's view of the cluster.
"""

import msgpack

from ember.connection import connected_client

# The head's KV key holding the standing request_resources() request, a msgpack map {"bundles": [...]}.
REQUEST_KEY = b"autoscaler:request"
# What the monitor last decided, for `ember status`: msgpack {"max_workers", "worker_shape", "launched", "infeasible"}.
STATUS_KEY = b"autoscaler:status"


def _check_bundle(bundle) -> dict:
    if not isinstance(bundle, dict):
        raise TypeError(f"Each bundle must be a dict of resource name to amount, got {type(bundle).__name__}.")
    checked = {}
    for name, amount in bundle.items():
        if not isinstance(name, str):
            raise TypeError(f"Resource names must be strings, got {name!r}.")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise ValueError(f"Resource {name!r} must be a non-negative number, got {amount!r}.")
        if amount:
            checked[name] = float(amount)
    return checked


def request_resources(num_cpus: int | None = None, bundles: list | None = None) -> None:
    """Ask the autoscaler to make the cluster able to hold these resources at once (Ray's
    ``ray.autoscaler.sdk.request_resources``).

    ``num_cpus`` asks for that many 1-CPU bundles; ``bundles`` is a list of resource dicts (e.g.
    ``[{"CPU": 2, "GPU": 1}]``). The request is packed onto the nodes' total resources, whether or not
    they are in use, and nodes are launched for what does not fit. Each call replaces the previous
    request; ``request_resources()`` with nothing clears it. It does not wait for the nodes.
    """
    from ember.runtime import protocol

    if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 0):
        raise ValueError(f"num_cpus must be a non-negative integer, got {num_cpus!r}.")
    if bundles is not None and not isinstance(bundles, (list, tuple)):
        raise TypeError(f"bundles must be a list of resource dicts, got {type(bundles).__name__}.")
    request = [{"CPU": 1.0}] * (num_cpus or 0)
    request += [b for b in (_check_bundle(b) for b in bundles or []) if b]
    payload = msgpack.packb({"bundles": request}, use_bin_type=True)
    connected_client().request("head", {"op": protocol.KV_PUT, "key": REQUEST_KEY, "overwrite": True}, [payload])


def status() -> dict | None:
    """What the autoscaler's monitor last published (``max_workers``, ``worker_shape``, ``launched``,
    ``infeasible``), or None when the cluster runs no autoscaler."""
    from ember.runtime import protocol

    reply, frames = connected_client().request("head", {"op": protocol.KV_GET, "key": STATUS_KEY}, timeout=10)
    if not reply.found or not frames:
        return None
    try:
        value = msgpack.unpackb(bytes(frames[0]), raw=False)
    except (ValueError, msgpack.ExtraData):
        return None
    return value if isinstance(value, dict) else None


def decode_request(value: bytes | None) -> list:
    """The bundles stored by request_resources() (a list of resource dicts; [] if none)."""
    if not value:
        return []
    try:
        bundles = msgpack.unpackb(value, raw=False).get("bundles", [])
    except (ValueError, AttributeError, msgpack.ExtraData):
        return []
    return [b for b in bundles if isinstance(b, dict)]


__all__ = ["request_resources", "status", "REQUEST_KEY", "STATUS_KEY"]
