"""``TorchTrainer``: a DataParallelTrainer whose workers form a torch.distributed process group."""

from ember.train.torch.config import TorchBackend, TorchConfig
from ember.train.trainer import DataParallelTrainer


class TorchTrainer(DataParallelTrainer):
    """Runs ``train_loop_per_worker(config)`` on ``scaling_config.num_workers`` workers that have
    joined one torch.distributed group (``torch_config``: its backend and timeout)."""

    _default_name = "TorchTrainer"

    def __init__(
        self,
        train_loop_per_worker,
        *,
        train_loop_config: dict | None = None,
        torch_config: TorchConfig | None = None,
        scaling_config=None,
        run_config=None,
        datasets: dict | None = None,
        dataset_config=None,
        resume_from_checkpoint=None,
        metadata: dict | None = None,
    ):
        torch_config = torch_config or TorchConfig()
        if not isinstance(torch_config, TorchConfig):
            raise TypeError(f"torch_config must be a TorchConfig, got {type(torch_config).__name__}.")
        super().__init__(
            train_loop_per_worker,
            train_loop_config=train_loop_config,
            backend=TorchBackend(torch_config),
            scaling_config=scaling_config,
            run_config=run_config,
            datasets=datasets,
            dataset_config=dataset_config,
            resume_from_checkpoint=resume_from_checkpoint,
            metadata=metadata,
        )
