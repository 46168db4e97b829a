"""How the public API reaches this process's client.

As in Ray, the first API call in a process that is not connected starts a local cluster
(``ember.init()``). Only the public API does this: the runtime below it never starts a cluster, so
unpickling an ObjectRef in a process without a client is an error, not a new cluster.
"""

from ember.runtime.client import core_client


def connected_client() -> "core_client.CoreClient":
    """This process's client, after ``ember.init()`` if it had none."""
    client = core_client.current_client(required=False)
    if client is None:
        from ember import api  # api imports the modules that import this one

        api.init()
        client = core_client.current_client()
    return client
