"""ember.tune.search: the searchers (``ray.tune.search``). ``ember.tune.search.optuna`` has
``OptunaSearch`` and imports optuna only when used."""

import importlib as _importlib

from ember.tune.search.searcher import BasicVariantGenerator, ConcurrencyLimiter, Searcher

__all__ = ["BasicVariantGenerator", "ConcurrencyLimiter", "Searcher"]


def __getattr__(name: str):
    if name == "optuna":
        return _importlib.import_module("ember.tune.search.optuna")
    raise AttributeError(f"module 'ember.tune.search' has no attribute {name!r}")
