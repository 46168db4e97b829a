"""The torch.distributed backend: rank 0 picks the rendezvous address (its node's address and a
free port there), then every worker joins the process group at once (gloo on CPU, nccl on GPUs)."""

import datetime
import os
from dataclasses import dataclass

import ember
from ember.train.trainer import Backend

_local = {"device_index": None}  # this worker's CUDA device index, once set up


@dataclass
class TorchConfig:
    """``backend``: "gloo", "nccl", or None for nccl with GPUs and gloo without; ``timeout_s``: how
    long collectives (and joining the group) may wait for the other workers; ``init_method`` ("tcp"
    or "env") is checked for Ray's sake, but every worker joins through a store rank 0 starts (and
    MASTER_ADDR/MASTER_PORT name it for code that reads them)."""

    backend: str | None = None
    init_method: str = "tcp"
    timeout_s: int = 1800

    def __post_init__(self):
        if self.backend not in (None, "gloo", "nccl"):
            raise ValueError(f"TorchConfig.backend must be 'gloo', 'nccl' or None, got {self.backend!r}.")
        if self.init_method not in ("tcp", "env"):
            raise ValueError(f"TorchConfig.init_method must be 'tcp' or 'env', got {self.init_method!r}.")
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) or self.timeout_s <= 0:
            raise ValueError(f"TorchConfig.timeout_s must be a positive number, got {self.timeout_s!r}.")


def _start_store(address: str, world_size: int, timeout_s: float) -> int:
    """In rank 0: the rendezvous store, listening on a port the OS picks as it binds (picking a free
    port first and binding it later lost the port to another process now and then); returns it."""
    import torch.distributed as dist

    store = dist.TCPStore(
        address, 0, world_size, True, timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=False
    )
    _local["store"] = store
    return store.port


def _setup_worker(address: str, port: int, place, config: TorchConfig, visible: str | None, threads: int) -> str:
    """In each worker: the environment torch expects, then join the process group through rank 0's
    store."""
    os.environ.update(
        MASTER_ADDR=address,
        MASTER_PORT=str(port),
        RANK=str(place.world_rank),
        WORLD_SIZE=str(place.world_size),
        LOCAL_RANK=str(place.local_rank),
        LOCAL_WORLD_SIZE=str(place.local_world_size),
        NODE_RANK=str(place.node_rank),
    )
    own = [str(i) for i in ember.get_gpu_ids()]
    if visible is not None:
        # Every GPU of the node's workers is visible to each (NCCL's peer-to-peer paths need it);
        # a worker's own device is its GPU's position in that list.
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
        _local["device_index"] = visible.split(",").index(own[0]) if own and own[0] in visible.split(",") else None
    import torch
    import torch.distributed as dist

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(threads)  # as many threads as CPUs reserved: two workers must not fight
    backend = config.backend
    if backend is None:
        backend = "nccl" if visible is not None and torch.cuda.is_available() else "gloo"
    if backend == "nccl" and _local["device_index"] is not None:
        torch.cuda.set_device(_local["device_index"])
    if dist.is_initialized():
        dist.destroy_process_group()
    timeout = datetime.timedelta(seconds=config.timeout_s)
    store = _local.pop("store", None) if place.world_rank == 0 else None
    if store is None:
        store = dist.TCPStore(address, port, place.world_size, False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=place.world_rank, world_size=place.world_size, timeout=timeout)
    return backend


class TorchBackend(Backend):
    def __init__(self, config: TorchConfig):
        self.config = config

    def warm_modules(self, scaling) -> tuple:
        # torch, then what DistributedDataParallel imports on first use (torch._dynamo: about as
        # long again as torch itself); a single worker's prepare_model does not wrap the model.
        modules = ("torch", "torch.distributed", "torch.utils.data")
        return modules + (("torch.nn.parallel", "torch._dynamo") if scaling.num_workers > 1 else ())

    def on_start(self, group, scaling) -> None:
        visible_by_node: dict = {}
        if scaling.num_gpus_per_worker > 0:
            for info in group.infos:
                ids = visible_by_node.setdefault(info["node_id"], [])
                ids += [str(i) for i in info["gpu_ids"] if str(i) not in ids]
        address = group.infos[0]["address"]
        port = ember.get(
            group.workers[0].execute.remote(_start_store, address, len(group.workers), self.config.timeout_s)
        )
        threads = max(1, int(scaling.worker_resources().get("CPU", 1)))
        pending = [
            worker.execute.remote(
                _setup_worker,
                address,
                port,
                place,
                self.config,
                ",".join(sorted(visible_by_node[info["node_id"]], key=_gpu_order))
                if info["node_id"] in visible_by_node
                else None,
                threads,
            )
            for worker, info, place in zip(group.workers, group.infos, group.places)
        ]
        # Joining blocks until every worker joins: a worker that fails must fail the start at once,
        # not after the others' rendezvous timeout.
        while pending:
            ready, pending = ember.wait(pending, num_returns=1)
            ember.get(ready)


def _gpu_order(gpu_id: str):
    return (0, int(gpu_id)) if gpu_id.isdigit() else (1, gpu_id)


def device_index():
    return _local["device_index"]
