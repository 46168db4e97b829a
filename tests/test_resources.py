"""Resources, GPUs, the runtime context and cluster information."""

import os

import pytest

import ember


def test_cluster_and_available_resources(cluster):
    total = ember.cluster_resources()
    assert total["CPU"] == 4 and total["GPU"] == 2 and total["custom"] == 4
    assert "memory" in total and "object_store_memory" in total
    from conftest import wait_for

    wait_for(lambda: ember.available_resources().get("CPU") == 4, message="all CPUs to be free")


def test_nodes(cluster):
    nodes = ember.nodes()
    assert len(nodes) == 1
    node = nodes[0]
    assert node["Alive"] and node["Resources"]["CPU"] == 4 and len(node["NodeID"]) == 32


def test_gpu_ids_and_cuda_visible_devices(cluster):
    @ember.remote(num_gpus=1)
    def whole():
        return ember.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")

    @ember.remote(num_gpus=2)
    def both():
        return ember.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")

    ids, visible = ember.get(whole.remote())
    assert len(ids) == 1 and visible == str(ids[0])
    ids, visible = ember.get(both.remote())
    assert sorted(ids) == [0, 1] and sorted(visible.split(",")) == ["0", "1"]
    assert ember.get_gpu_ids() == []


def test_fractional_gpus_share_one_device(cluster):
    @ember.remote(num_gpus=0.5)
    class Half:
        def ids(self):
            return ember.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")

    a, b = Half.remote(), Half.remote()
    (ids_a, visible_a), (ids_b, visible_b) = ember.get([a.ids.remote(), b.ids.remote()])
    assert ids_a == ids_b and len(ids_a) == 1  # packed onto one GPU before using the next
    assert visible_a == visible_b == str(ids_a[0])
    ember.kill(a)
    ember.kill(b)


def test_custom_and_fractional_resources(cluster):
    @ember.remote(num_cpus=0.25, resources={"custom": 0.5})
    def small():
        return ember.get_runtime_context().get_assigned_resources()

    assigned = ember.get(small.remote())
    assert assigned["CPU"] == 0.25 and assigned["custom"] == 0.5


def test_runtime_context(cluster):
    context = ember.get_runtime_context()
    assert context.get_task_id() is None and context.get_actor_id() is None
    job = context.get_job_id()

    @ember.remote
    def inside():
        c = ember.get_runtime_context()
        return c.get_job_id(), c.get_task_id(), c.get_node_id(), c.get_worker_id(), c.get_actor_id()

    job_id, task_id, node_id, worker_id, actor_id = ember.get(inside.remote())
    assert job_id == job and task_id and node_id == context.get_node_id() and worker_id and actor_id is None

    @ember.remote
    class Who:
        def ids(self):
            c = ember.get_runtime_context()
            return c.get_actor_id(), c.get_task_id()

    who = Who.remote()
    actor_id, call_id = ember.get(who.ids.remote())
    assert actor_id == who._actor_id.hex() and call_id


def test_public_api_names():
    # ember/__init__.py re-exports the public API and nothing else.
    expected = {
        "ActorClass",
        "ActorHandle",
        "DynamicObjectRefGenerator",
        "ObjectRef",
        "ObjectRefGenerator",
        "RemoteFunction",
        "available_resources",
        "cancel",
        "cluster_resources",
        "data",
        "serve",
        "exceptions",
        "get",
        "get_actor",
        "get_gpu_ids",
        "get_runtime_context",
        "init",
        "is_initialized",
        "kill",
        "load_ipython_extension",
        "method",
        "nodes",
        "put",
        "remote",
        "rllib",
        "shutdown",
        "timeline",
        "train",
        "tune",
        "unload_ipython_extension",
        "util",
        "wait",
    }
    assert set(ember.__all__) == expected
    # The libraries are attributes loaded on first use (module __getattr__), imported or not yet.
    public = {name for name in vars(ember) if not name.startswith("_")} | set(ember._LIBRARIES)
    submodules = {
        "actor",
        "api",
        "autoscaler",
        "cli",
        "cli_jobs",
        "connection",
        "dashboard",
        "job_submission",
        "kernel_ext",
        "options",
        "remote_function",
        "runtime",
        "runtime_context",
        "widgets",
    }
    assert public - submodules == expected


@pytest.mark.parametrize("bad", [{"num_gpus": -1}, {"memory": -5}, {"resources": {"x": "one"}}])
def test_resource_validation(cluster, bad):
    with pytest.raises((ValueError, TypeError)):
        ember.remote(**bad)(lambda: None)
