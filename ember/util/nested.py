"""Results as nested dicts that also answer Ray Tune's slash-joined keys.

RLlib reports nested results (``{"env_runners": {"episode_return_mean": ...}}``) and Ray Tune names
their leaves by path (``"env_runners/episode_return_mean"``) in stop criteria, schedulers, searchers
and ``get_best_result``. ``NestedResult`` keeps the nesting and answers the paths; ``leaves`` and
``flatten`` give the flat form (Train's ``metrics_dataframe`` columns, Tune's results table).
"""


class NestedResult(dict):
    """A result as reported, answering ``result["a/b"]`` with ``result["a"]["b"]`` too."""

    def __getitem__(self, key):
        if isinstance(key, str) and "/" in key and not dict.__contains__(self, key):
            return at_path(self, key)
        return dict.__getitem__(self, key)

    def __contains__(self, key):
        if dict.__contains__(self, key):
            return True
        if isinstance(key, str) and "/" in key:
            try:
                at_path(self, key)
            except KeyError:
                return False
            return True
        return False

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __reduce__(self):
        return (type(self), (dict(self),))


def at_path(values: dict, key: str):
    """The value under the slash-joined ``key``; KeyError when a part is missing."""
    node = values
    for part in key.split("/"):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = dict.__getitem__(node, part)
    return node


def leaves(values: dict, prefix: str = ""):
    """(slash-joined key, value) for every value under ``values`` that is not a dict."""
    for key, value in values.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", value


def flatten(values: dict, prefix: str = "") -> dict:
    """``values`` as one flat dict keyed by slash-joined paths."""
    return dict(leaves(values, prefix))
