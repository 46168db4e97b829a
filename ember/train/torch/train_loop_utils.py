"""Helpers for the training loop: the worker's device, DDP for the model and a distributed sampler
for the data loader, as ``ray.train.torch``'s."""

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from ember.train import session
from ember.train.torch.config import device_index


def get_device() -> torch.device:
    """This worker's device: its GPU (``cuda:i``) when it was given one and CUDA works, else CPU."""
    index = device_index()
    if index is not None and torch.cuda.is_available():
        return torch.device("cuda", index)
    return torch.device("cpu")


def get_devices() -> list:
    return [get_device()]


def prepare_model(model, move_to_device=True, parallel_strategy: str | None = "ddp", parallel_strategy_kwargs=None):
    """Move ``model`` to the worker's device and wrap it for data-parallel training
    (``DistributedDataParallel``; ``parallel_strategy="fsdp"`` for FSDP, None for neither):
    gradients are then averaged over all workers in ``backward``."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"prepare_model expects a torch.nn.Module, got {type(model).__name__}.")
    if parallel_strategy not in ("ddp", "fsdp", None):
        raise ValueError(f"parallel_strategy must be 'ddp', 'fsdp' or None, got {parallel_strategy!r}.")
    device = get_device()
    if move_to_device:
        model = model.to(device if isinstance(move_to_device, bool) else move_to_device)
    if parallel_strategy is None or session.get_context().get_world_size() == 1:
        return model
    kwargs = dict(parallel_strategy_kwargs or {})
    if parallel_strategy == "fsdp":
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(model, **kwargs)
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        kwargs.setdefault("device_ids", [device.index])
        kwargs.setdefault("output_device", device.index)
    return DistributedDataParallel(model, **kwargs)


class _DeviceLoader:
    """A DataLoader whose batches arrive on the worker's device."""

    def __init__(self, loader: DataLoader, device: torch.device):
        self._loader = loader
        self.device = device

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def __len__(self):
        return len(self._loader)

    def __iter__(self):
        for batch in self._loader:
            yield _to(batch, self.device)


def _to(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(item, device) for item in batch)
    if isinstance(batch, dict):
        return {key: _to(value, device) for key, value in batch.items()}
    return batch


def prepare_data_loader(data_loader: DataLoader, add_dist_sampler: bool = True, move_to_device: bool = True):
    """Give each worker its own part of ``data_loader``'s dataset (a ``DistributedSampler``,
    shuffled when the loader shuffled) and, on a GPU, move its batches to the device. Call
    ``loader.sampler.set_epoch(epoch)`` each epoch for a new shuffle, as with plain DDP."""
    if not isinstance(data_loader, DataLoader):
        raise TypeError(f"prepare_data_loader expects a torch DataLoader, got {type(data_loader).__name__}.")
    context = session.get_context()
    world = context.get_world_size()
    if add_dist_sampler and world > 1 and not isinstance(data_loader.sampler, DistributedSampler):
        if data_loader.batch_sampler is not None and data_loader.batch_size is None:
            raise ValueError("prepare_data_loader cannot add a DistributedSampler to a loader with a batch_sampler.")
        sampler = DistributedSampler(
            data_loader.dataset,
            num_replicas=world,
            rank=context.get_world_rank(),
            shuffle=isinstance(data_loader.sampler, RandomSampler),
        )
        extra = {}
        if data_loader.num_workers > 0:
            extra = {
                "prefetch_factor": data_loader.prefetch_factor,
                "persistent_workers": data_loader.persistent_workers,
            }
        data_loader = DataLoader(
            data_loader.dataset,
            batch_size=data_loader.batch_size,
            sampler=sampler,
            num_workers=data_loader.num_workers,
            collate_fn=data_loader.collate_fn,
            pin_memory=data_loader.pin_memory,
            drop_last=data_loader.drop_last,
            timeout=data_loader.timeout,
            worker_init_fn=data_loader.worker_init_fn,
            **extra,
        )
    device = get_device()
    if move_to_device and device.type != "cpu":
        return _DeviceLoader(data_loader, device)
    return data_loader
