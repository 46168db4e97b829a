"""Search spaces, as Ray Tune's: domain objects (``uniform``, ``choice``, ...) placed anywhere in a
nested ``param_space``, ``grid_search`` lists, and the resolution of one space into concrete configs.

A domain samples with a ``random.Random`` that the searcher owns, so a seeded searcher gives the same
configs every time. ``sample_from`` functions see the config resolved so far (``spec.config``) and
are resolved after every other value.
"""

import math
import random

GRID = "grid_search"


class Domain:
    """A set of values one config entry may take; ``sample(rng)`` draws one."""

    def sample(self, rng: random.Random):
        raise NotImplementedError

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}.")
    return value


def _quantize(value, q):
    if q is None:
        return value
    return round(round(value / q) * q, 12) if isinstance(q, float) else int(round(value / q) * q)


class Float(Domain):
    """A float in [lower, upper): uniform, or uniform in log space (``log_base``), optionally rounded to ``q``."""

    def __init__(self, lower, upper, q=None, log_base=None):
        self.lower, self.upper = _number("lower", lower), _number("upper", upper)
        if self.lower > self.upper:
            raise ValueError(f"lower bound {lower} is above the upper bound {upper}.")
        if log_base is not None and self.lower <= 0:
            raise ValueError(f"a log-uniform space needs a positive lower bound, got {lower}.")
        if q is not None and _number("q", q) <= 0:
            raise ValueError(f"q must be positive, got {q}.")
        self.q, self.log_base = q, log_base

    def sample(self, rng):
        if self.log_base is None:
            value = rng.uniform(self.lower, self.upper)
        else:
            log = math.log(self.log_base)
            value = self.log_base ** rng.uniform(math.log(self.lower) / log, math.log(self.upper) / log)
        return float(_quantize(value, self.q))


class Integer(Domain):
    """An int in [lower, upper) (``upper`` included when quantized, as Ray's ``qrandint``)."""

    def __init__(self, lower, upper, q=None, log_base=None, inclusive=False):
        for name, value in (("lower", lower), ("upper", upper)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}.")
        if lower > upper or (lower == upper and not inclusive):
            raise ValueError(f"randint needs lower < upper, got [{lower}, {upper}).")
        if log_base is not None and lower <= 0:
            raise ValueError(f"a log-spaced int space needs a positive lower bound, got {lower}.")
        if q is not None and (isinstance(q, bool) or not isinstance(q, int) or q <= 0):
            raise ValueError(f"q must be a positive int, got {q!r}.")
        self.lower, self.upper, self.q, self.log_base, self.inclusive = lower, upper, q, log_base, inclusive

    def sample(self, rng):
        top = self.upper if self.inclusive else self.upper - 1
        if self.log_base is None:
            value = rng.randint(self.lower, top)
        else:
            value = int(math.floor(math.exp(rng.uniform(math.log(self.lower), math.log(top + 1)))))
            value = min(max(value, self.lower), top)
        return int(_quantize(value, self.q)) if self.q else value


class Normal(Domain):
    def __init__(self, mean=0.0, sd=1.0, q=None):
        self.mean, self.sd, self.q = _number("mean", mean), _number("sd", sd), q
        if sd <= 0:
            raise ValueError(f"sd must be positive, got {sd}.")

    def sample(self, rng):
        return float(_quantize(rng.gauss(self.mean, self.sd), self.q))


class Categorical(Domain):
    def __init__(self, categories):
        if isinstance(categories, (str, bytes)) or not hasattr(categories, "__len__") or not len(categories):
            raise ValueError(f"choice needs a non-empty list of categories, got {categories!r}.")
        self.categories = list(categories)

    def sample(self, rng):
        return self.categories[rng.randrange(len(self.categories))]


class Function(Domain):
    """``sample_from(func)``: ``func(spec)`` with ``spec.config`` the config resolved so far."""

    def __init__(self, func):
        if not callable(func):
            raise TypeError(f"sample_from needs a function, got {type(func).__name__}.")
        self.func = func

    def sample(self, rng, spec=None):
        try:
            return self.func(spec)
        except TypeError:
            if spec is not None:
                raise
            return self.func()


# ---- Ray's constructors -------------------------------------------------------------------------


def uniform(lower: float, upper: float) -> Float:
    """A float drawn uniformly from [lower, upper)."""
    return Float(lower, upper)


def quniform(lower: float, upper: float, q: float) -> Float:
    """A uniform float rounded to a multiple of ``q``."""
    return Float(lower, upper, q=q)


def loguniform(lower: float, upper: float, base: float = 10) -> Float:
    """A float uniform in log space between ``lower`` and ``upper`` (both > 0)."""
    return Float(lower, upper, log_base=base)


def qloguniform(lower: float, upper: float, q: float, base: float = 10) -> Float:
    return Float(lower, upper, q=q, log_base=base)


def randint(lower: int, upper: int) -> Integer:
    """An int in [lower, upper) (upper excluded)."""
    return Integer(lower, upper)


def qrandint(lower: int, upper: int, q: int = 1) -> Integer:
    """An int in [lower, upper] (upper included), rounded to a multiple of ``q``."""
    return Integer(lower, upper, q=q, inclusive=True)


def lograndint(lower: int, upper: int, base: float = 10) -> Integer:
    """An int in [lower, upper), uniform in log space."""
    return Integer(lower, upper, log_base=base)


def qlograndint(lower: int, upper: int, q: int, base: float = 10) -> Integer:
    return Integer(lower, upper, q=q, log_base=base, inclusive=True)


def randn(mean: float = 0.0, sd: float = 1.0) -> Normal:
    """A float from the normal distribution N(mean, sd)."""
    return Normal(mean, sd)


def qrandn(mean: float, sd: float, q: float) -> Normal:
    return Normal(mean, sd, q)


def choice(categories) -> Categorical:
    """One of ``categories``, each equally likely."""
    return Categorical(categories)


def sample_from(func) -> Function:
    """A value computed by ``func(spec)`` from the rest of the config (``spec.config``)."""
    return Function(func)


def grid_search(values) -> dict:
    """Every one of ``values``: a trial per value (crossed with any other grid)."""
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise TypeError(f"grid_search needs a list of values, got {values!r}.")
    values = list(values)
    if not values:
        raise ValueError("grid_search needs at least one value.")
    return {GRID: values}


# ---- resolution ---------------------------------------------------------------------------------


class _Config(dict):
    """The config given to ``sample_from``: a dict that also reads as attributes (``spec.config.lr``)."""

    def __getattr__(self, name):
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return _Config(value) if isinstance(value, dict) else value


class Spec:
    def __init__(self, config: dict):
        self.config = _Config(config)


def is_grid(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and GRID in value


def walk(space, path=()):
    """(path, leaf) for every domain and grid in a nested dict/list space."""
    if is_grid(space) or isinstance(space, Domain):
        yield path, space
    elif isinstance(space, dict):
        for key, value in space.items():
            yield from walk(value, (*path, key))
    elif isinstance(space, (list, tuple)):
        for index, value in enumerate(space):
            yield from walk(value, (*path, index))


def grid_axes(space) -> list:
    """The grid searches of ``space``: (path, values), in the space's order."""
    return [(path, leaf[GRID]) for path, leaf in walk(space) if is_grid(leaf)]


def grid_size(space) -> int:
    return math.prod(len(values) for _, values in grid_axes(space))


def grid_points(space) -> list:
    """Every combination of the grid values, as {path: value}; the first grid varies fastest (Ray's order)."""
    axes = grid_axes(space)
    sizes = [len(values) for _, values in axes]
    points = []
    for n in range(math.prod(sizes)):
        point, rest = {}, n
        for (path, values), size in zip(axes, sizes):
            point[path] = values[rest % size]
            rest //= size
        points.append(point)
    return points


def _set(config, path, value):
    target = config
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


def _copy(space):
    if isinstance(space, dict):
        return {k: _copy(v) for k, v in space.items()}
    if isinstance(space, list):
        return [_copy(v) for v in space]
    return space


def resolve(space: dict, rng: random.Random, fixed: dict | None = None) -> dict:
    """A concrete config from ``space``: ``fixed`` ({path: value}, e.g. a grid point) first, then
    every other domain sampled, then ``sample_from`` functions (in passes, as one may read another)."""
    config = _copy(space)
    fixed = fixed or {}
    functions = []
    for path, leaf in walk(space):
        if path in fixed:
            _set(config, path, fixed[path])
        elif is_grid(leaf):
            raise ValueError(f"grid_search at {'/'.join(map(str, path))} was not expanded.")
        elif isinstance(leaf, Function):
            functions.append((path, leaf))
        else:
            _set(config, path, leaf.sample(rng))
    for _ in range(len(functions) + 1):
        if not functions:
            break
        left = []
        for path, leaf in functions:
            try:
                _set(config, path, leaf.sample(rng, Spec(config)))
            except (AttributeError, KeyError, TypeError):
                left.append((path, leaf))
        if len(left) == len(functions):
            path, leaf = left[0]
            leaf.sample(rng, Spec(config))  # raise the function's own error
        functions = left
    return config


def merge_point(space: dict, point: dict) -> dict:
    """``space`` with the values of ``point`` (a partial config) in place of its domains."""
    merged = _copy(space)

    def put(target, values, where):
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(target.get(key), dict) and not is_grid(target[key]):
                put(target[key], value, (*where, key))
            else:
                target[key] = value

    if not isinstance(point, dict):
        raise TypeError(f"points_to_evaluate must hold dicts, got {type(point).__name__}.")
    put(merged, point, ())
    return merged
