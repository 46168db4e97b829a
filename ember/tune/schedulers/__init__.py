"""Trial schedulers (``ray.tune.schedulers``): after each result, CONTINUE, PAUSE or STOP the trial.

Plain state machines: the controller calls ``on_trial_add``, ``on_trial_result`` (which returns the
decision), ``on_trial_complete``, ``on_trial_error`` and ``choose_trial_to_run``; a scheduler never
touches actors. Its first argument is the experiment (``ember.tune.experiment.Experiment``).
"""

from ember.tune.schedulers.asha import ASHAScheduler, AsyncHyperBandScheduler
from ember.tune.schedulers.base import FIFOScheduler, TrialScheduler
from ember.tune.schedulers.hyperband import HyperBandScheduler
from ember.tune.schedulers.median import MedianStoppingRule
from ember.tune.schedulers.pbt import PopulationBasedTraining

__all__ = [
    "ASHAScheduler",
    "AsyncHyperBandScheduler",
    "FIFOScheduler",
    "HyperBandScheduler",
    "MedianStoppingRule",
    "PopulationBasedTraining",
    "TrialScheduler",
]
