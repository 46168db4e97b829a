"""ember.train.xgboost: one XGBoost model trained across the workers, as ``ray.train.xgboost``.

XGBoost's own collective does the work: the trainer starts XGBoost's tracker (in the rank-0
worker), and every worker's training loop runs inside ``xgboost.collective.CommunicatorContext``
joined to it, so ``xgboost.train`` on each worker's shard builds the same trees together
(histograms are summed across workers). ``RayTrainReportCallback`` reports each round's
evaluation results and checkpoints the model as ``model.ubj``.
"""

from ember.train.xgboost.trainer import RayTrainReportCallback, XGBoostTrainer, get_collective_args

__all__ = ["RayTrainReportCallback", "XGBoostTrainer", "get_collective_args"]
