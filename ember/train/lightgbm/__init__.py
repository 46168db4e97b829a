"""ember.train.lightgbm: one LightGBM model trained across the workers, as ``ray.train.lightgbm``.

LightGBM's own distributed mode does the work: every worker gets the list of all workers'
addresses (``machines``), its own ``local_listen_port`` and ``num_machines`` through
``get_network_params()``, and calls ``lightgbm.train`` on its shard; the workers then build the same
trees together (data-parallel tree learning). ``RayTrainReportCallback`` reports each round's
evaluation results and checkpoints the model as ``model.txt``.
"""

from ember.train.lightgbm.trainer import LightGBMTrainer, RayTrainReportCallback, get_network_params

__all__ = ["LightGBMTrainer", "RayTrainReportCallback", "get_network_params"]
