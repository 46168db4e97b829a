"""ember.train.torch: ``TorchTrainer`` and the loop helpers, as ``ray.train.torch``.

Each worker joins one ``torch.distributed`` process group (gloo on CPU, nccl on GPUs) before the
loop starts; ``prepare_model`` wraps the model in DistributedDataParallel and
``prepare_data_loader`` shards a DataLoader between the workers.
"""

from ember.train.torch.config import TorchConfig
from ember.train.torch.train_loop_utils import get_device, get_devices, prepare_data_loader, prepare_model
from ember.train.torch.trainer import TorchTrainer

__all__ = ["TorchConfig", "TorchTrainer", "get_device", "get_devices", "prepare_data_loader", "prepare_model"]
