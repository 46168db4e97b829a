"""The logical plan of a Dataset, its stages (per-block transforms) and the optimizer.

A Dataset is a chain of logical operators. Before it runs, the optimizer pushes ``limit`` and
column selection into the read where it can, then fuses consecutive map-like operators (and the
read before them) into one physical operator whose task applies every stage to a block in turn,
so a read -> map -> map_batches -> filter pipeline costs one task per block.
"""

import inspect
from dataclasses import dataclass, field

import pyarrow as pa

from ember.data import block as blk


class ActorPoolStrategy:
    """Run a map on an autoscaling pool of actors between ``min_size`` and ``max_size``."""

    def __init__(self, min_size: int = 1, max_size: int | None = None, *, size: int | None = None):
        if size is not None:
            min_size = max_size = size
        if max_size is None:
            max_size = min_size
        for name, value in (("min_size", min_size), ("max_size", max_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ActorPoolStrategy {name} must be a positive int, got {value!r}.")
        if min_size > max_size:
            raise ValueError(f"ActorPoolStrategy min_size ({min_size}) must not exceed max_size ({max_size}).")
        self.min_size, self.max_size = min_size, max_size

    def __eq__(self, other):
        return isinstance(other, ActorPoolStrategy) and (other.min_size, other.max_size) == (
            self.min_size,
            self.max_size,
        )

    def __repr__(self):
        return f"ActorPoolStrategy(min_size={self.min_size}, max_size={self.max_size})"


class TaskPoolStrategy:
    """Run a map as tasks, at most ``size`` at once when given."""

    def __init__(self, size: int | None = None):
        self.size = size

    def __eq__(self, other):
        return isinstance(other, TaskPoolStrategy) and other.size == self.size


def check_runs_as_tasks(compute, what: str) -> None:
    """For a transform that has no callable class to put on actors: ``compute`` must be None,
    "tasks" or a TaskPoolStrategy."""
    if compute is None or compute == "tasks" or isinstance(compute, TaskPoolStrategy):
        return
    if isinstance(compute, ActorPoolStrategy):
        raise ValueError(f"{what}: runs in tasks; an ActorPoolStrategy is for callable classes.")
    raise ValueError(f"{what}: compute must be a TaskPoolStrategy or None, got {compute!r}.")


def fn_name(fn) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


# ---- stages: what a fused task applies to each block --------------------------------------------


@dataclass
class Stage:
    """One map-like step; ``fn`` may be a class, constructed once per worker (actor) by ``setup``."""

    kind: str
    fn: object = None
    fn_args: tuple = ()
    fn_kwargs: dict = field(default_factory=dict)
    ctor_args: tuple = ()
    ctor_kwargs: dict = field(default_factory=dict)
    batch_size: int | None = None
    batch_format: str = "default"
    zero_copy: bool = False
    extra: object = None
    light: bool = False  # Ember's own work, whose cost per row does not grow with the block (see read_tasks)
    reads: frozenset | None = None  # the columns an expression stage reads, when known
    # The block's place in the dataset, set by the task before it applies the stages: a write names
    # its file after it, a seeded sample keys its random stream on it.
    index: int = 0
    _callable: object = None

    def setup(self):
        if self._callable is None:
            if inspect.isclass(self.fn):
                self._callable = self.fn(*self.ctor_args, **self.ctor_kwargs)
            else:
                self._callable = self.fn
        return self._callable

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_callable"] = None  # an instance of a user class is built where the stage runs
        return state

    def apply(self, table: pa.Table) -> pa.Table:
        kind = self.kind
        if kind == "select":
            missing = [c for c in self.extra if c not in table.column_names]
            if missing and (table.num_columns or table.num_rows):
                raise KeyError(f"select_columns: no column(s) {missing} in {table.column_names}")
            if missing:  # an empty block of no known columns (a read that found nothing) has none to pick
                return table
            return table.select(self.extra)
        if kind == "drop":
            return table.drop_columns([c for c in self.extra if c in table.column_names])
        if kind == "filter_expr":
            try:
                return table.filter(self.extra)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as error:
                raise _expression_error(f"filter(expr={self.extra})", table, error) from None
        if kind == "with_columns":
            return with_columns(table, self.extra)
        if kind == "rename":
            return table.rename_columns([self.extra.get(c, c) for c in table.column_names])
        if kind == "random_sample":
            return sample_rows(table, *self.extra, self.index)
        if kind == "split_side":
            return split_side(table, *self.extra, self.index)
        call = self.setup()
        if kind == "map":
            return (
                blk.from_rows(
                    [_checked_row(call(row, *self.fn_args, **self.fn_kwargs), "map") for row in blk.iter_rows(table)]
                )
                if table.num_rows
                else table
            )
        if kind == "flat_map":
            out = []
            for row in blk.iter_rows(table):
                out.extend(call(row, *self.fn_args, **self.fn_kwargs))
            return blk.from_rows(out) if out else table.slice(0, 0)
        if kind == "filter":
            mask = [bool(call(row, *self.fn_args, **self.fn_kwargs)) for row in blk.iter_rows(table)]
            return table.filter(pa.array(mask, type=pa.bool_())) if mask else table
        if kind == "add_column":
            name = self.extra
            batch = blk.to_batch(table, self.batch_format)
            values = call(batch, *self.fn_args, **self.fn_kwargs)
            array = blk._array_of(
                values.to_numpy()
                if hasattr(values, "to_numpy") and not isinstance(values, (pa.Array, pa.ChunkedArray))
                else values
            )
            if name in table.column_names:
                return table.set_column(table.column_names.index(name), name, array)
            return table.append_column(name, array)
        if kind == "map_batches":
            outputs = []
            for piece in blk.split_rows(table, self.batch_size) if table.num_rows else [table]:
                result = call(blk.to_batch(piece, self.batch_format, self.zero_copy), *self.fn_args, **self.fn_kwargs)
                if inspect.isgenerator(result):
                    outputs.extend(blk.from_batch(r) for r in result)
                else:
                    outputs.append(blk.from_batch(result))
            return blk.concat(outputs)
        if kind == "write":
            return self.fn(table, self.index)
        if kind == "slice":
            return table.slice(0, self.extra)
        raise ValueError(f"unknown stage kind {kind!r}")


def with_columns(table: pa.Table, columns: list) -> pa.Table:
    """``table`` with each (name, pyarrow Expression) of ``columns`` evaluated by Arrow on the whole
    block, every one of them on the input columns; a name already there is replaced in place."""
    import pyarrow.dataset as pds

    try:
        values = pds.dataset(table).to_table(columns=dict(columns), use_threads=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as error:
        names = ", ".join(f"{n}={e}" for n, e in columns)
        raise _expression_error(f"with_column({names})", table, error) from None
    for name in values.column_names:
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, values[name])
        else:
            table = table.append_column(name, values[name])
    return table


def _expression_error(what: str, table: pa.Table, error: Exception) -> Exception:
    # Arrow's own messages name a missing field or a kernel without saying which expression failed.
    text = str(error).split("\n", 1)[0]
    if "No match for FieldRef" in text:
        return KeyError(f"{what}: no such column ({text}); the block has {table.column_names}.")
    types = {name: str(t) for name, t in zip(table.column_names, table.schema.types)}
    return TypeError(f"{what}: cannot evaluate on columns {types}: {text}")


def sample_rows(table: pa.Table, fraction: float, seed, index: int) -> pa.Table:
    """Keep each row with probability ``fraction``. A seeded sample draws from a stream keyed by the
    seed and the block's place in the dataset, so it repeats exactly whichever worker runs which
    block, and no two blocks repeat each other's draws."""
    import numpy as np

    rng = np.random.default_rng(None if seed is None else [seed, index])
    keep = rng.random(table.num_rows) < fraction
    return table.filter(pa.array(keep, type=pa.bool_()))


def split_side(table: pa.Table, test_size: float, split_type: str, seed, hash_column, train: bool, index: int):
    """One side of a streaming train/test split: the rows whose draw (keyed as ``sample_rows``'s,
    the seed optional) or whose key's hash falls on that side. Keys hash as Ray's do: the first 8
    bytes of blake2b of ``str(key)`` below (1 - test_size) * 2**64 mean train."""
    import hashlib

    import numpy as np

    if split_type == "random":
        in_train = np.random.default_rng([index] if seed is None else [index, seed]).random(table.num_rows) < (
            1 - test_size
        )
    else:
        if hash_column not in table.column_names:
            raise KeyError(f"streaming_train_test_split: no column {hash_column!r} in {table.column_names}")
        bound = (1 - test_size) * (1 << 64)
        in_train = np.fromiter(
            (
                int.from_bytes(hashlib.blake2b(str(key).encode(), digest_size=8).digest(), "big") < bound
                for key in table.column(hash_column).to_pylist()
            ),
            bool,
            table.num_rows,
        )
    return table.filter(pa.array(in_train if train else ~in_train, type=pa.bool_()))


def _checked_row(row, what: str):
    if not isinstance(row, dict):
        raise TypeError(f"{what}: the function must return a dict (one row), got {type(row).__name__}.")
    return row


def apply_stages(stages: list, table: pa.Table) -> pa.Table:
    for stage in stages:
        table = stage.apply(table)
    return table


# ---- logical operators ----------------------------------------------------------------------------


class LogicalOp:
    name = "Op"

    def __init__(self, inputs=()):
        self.inputs = list(inputs)

    def chain(self) -> list:
        """This operator and everything it depends on, sources first."""
        seen, order = set(), []

        def visit(op):
            if id(op) in seen:
                return
            seen.add(id(op))
            for child in op.inputs:
                visit(child)
            order.append(op)

        visit(self)
        return order


class Read(LogicalOp):
    """A source: read tasks (each makes one block) with their metadata estimates.

    ``plan_tasks(columns, light)``, when a source has it, makes the tasks again for the columns
    actually read, larger when ``light`` (no user function runs in the read's tasks): see
    ``read_tasks``."""

    def __init__(
        self,
        name: str,
        tasks: list,
        columns=None,
        limit=None,
        plan_tasks=None,
        filterable=False,
        pushed=None,
        remote_args=None,
        concurrency=None,
    ):
        super().__init__()
        self.name, self.tasks, self.columns, self.limit = name, tasks, columns, limit
        self.plan_tasks = plan_tasks
        # ``filterable``: plan_tasks takes a third argument, a pyarrow Expression its scan applies
        # (Parquet), so the optimizer may push an expression filter into it as ``filter``.
        self.filterable, self.filter = filterable, pushed
        # How its tasks run (read_datasource's ray_remote_args and concurrency); the built-in readers leave them out.
        self.remote_args, self.concurrency = dict(remote_args or {}), concurrency

    def copy(self, columns=None, limit=None, pushed=None) -> "Read":
        pushed = self.filter if pushed is None else pushed
        return Read(
            self.name,
            self.tasks,
            columns,
            limit,
            self.plan_tasks,
            self.filterable,
            pushed,
            self.remote_args,
            self.concurrency,
        )


class InputData(LogicalOp):
    """Blocks already in the object store: a list of (ref, BlockMetadata)."""

    name = "InputData"

    def __init__(self, bundles: list, name: str = "InputData"):
        super().__init__()
        self.bundles, self.name = bundles, name


class MapOp(LogicalOp):
    """A map-like operator: one stage, how it runs (tasks or an actor pool) and its resources."""

    def __init__(
        self, name, child, stage, compute=None, remote_args=None, keeps_rows=False, concurrency=None, min_rows=None
    ):
        super().__init__([child])
        self.name, self.stage, self.compute = name, stage, compute
        self.remote_args = dict(remote_args or {})
        self.keeps_rows = keeps_rows  # one output row per input row, so a limit may move before it
        self.concurrency = concurrency
        # Its tasks take consecutive blocks together, at least this many rows each (the last one
        # fewer): Ray's min_rows_per_file for a write. Such an operator is never fused into the one
        # before it, whose blocks it gathers.
        self.min_rows = min_rows


class Limit(LogicalOp):
    def __init__(self, child, n: int):
        super().__init__([child])
        self.n, self.name = n, f"Limit[{n}]"


class Union(LogicalOp):
    name = "Union"


class AllToAll(LogicalOp):
    """A barrier: ``fn(list of input bundle lists) -> bundles`` runs once every input is done."""

    def __init__(self, name, inputs, fn):
        super().__init__(inputs)
        self.name, self.fn = name, fn


# ---- the optimizer --------------------------------------------------------------------------------


def optimize(op: LogicalOp) -> LogicalOp:
    """Rewrite the plan: push limits and column selection down to reads (copies, never in place)."""
    if isinstance(op, Limit):
        child = optimize(op.inputs[0])
        if isinstance(child, Limit):
            return optimize(Limit(child.inputs[0], min(op.n, child.n)))
        # The limit stays where it is (it trims exactly and stops everything upstream once met);
        # a copy of it also goes into the read, through maps that keep one row per row, so the read
        # skips the tasks it does not need and each task reads at most n rows.
        return Limit(_limit_read(child, op.n), op.n)
    if isinstance(op, MapOp) and op.stage.kind == "select" and op.compute is None:
        child = optimize(op.inputs[0])
        if isinstance(child, Read) and (child.columns is None or set(op.stage.extra) <= set(child.columns)):
            pushed = child.copy(list(op.stage.extra), child.limit)
            # The select stays too: it fixes the column order and fails clearly on a missing column.
            return _remap(op, pushed)
        return _remap(op, child)
    if isinstance(op, (Read, InputData)):
        return op
    if isinstance(op, MapOp) and op.stage.kind == "filter_expr":
        child = optimize(op.inputs[0])
        if _filter_pushable(op, child):
            pushed = op.stage.extra if child.filter is None else child.filter & op.stage.extra
            return child.copy(child.columns, child.limit, pushed)
        return _remap(op, child)
    if isinstance(op, MapOp):
        return _remap(op, optimize(op.inputs[0]))
    if isinstance(op, Union):
        return Union([optimize(i) for i in op.inputs])
    if isinstance(op, AllToAll):
        return AllToAll(op.name, [optimize(i) for i in op.inputs], op.fn)
    raise TypeError(f"unknown logical operator {op!r}")


def _filter_pushable(op: MapOp, child) -> bool:
    """Whether an expression filter may move into the scan of the read below it: a read that scans
    with a filter, no limit in it to apply first, nothing of the filter's own to schedule, and only
    columns the read reads (when it reads a subset, a filter on another column must fail as it
    would after the read)."""
    if not isinstance(child, Read) or not child.filterable or child.limit is not None:
        return False
    if op.compute is not None or op.remote_args or op.concurrency is not None:
        return False
    if child.columns is None:
        return True
    return op.stage.reads is not None and op.stage.reads <= set(child.columns)


def _limit_read(op: LogicalOp, n: int) -> LogicalOp:
    if isinstance(op, Read):
        return op.copy(op.columns, n if op.limit is None else min(n, op.limit))
    if isinstance(op, MapOp) and op.keeps_rows:
        return _remap(op, _limit_read(op.inputs[0], n))
    return op


def _remap(op: MapOp, child) -> MapOp:
    return MapOp(op.name, child, op.stage, op.compute, op.remote_args, op.keeps_rows, op.concurrency, op.min_rows)


# ---- physical operators (what the executor runs) --------------------------------------------------


@dataclass
class PhysicalOp:
    kind: str  # "map", "input", "limit", "union", "barrier"
    name: str
    inputs: list = field(default_factory=list)
    stages: list = field(default_factory=list)
    read: Read | None = None
    compute: object = None
    remote_args: dict = field(default_factory=dict)
    concurrency: int | None = None
    bundles: list = field(default_factory=list)
    n: int = 0
    fn: object = None
    min_rows: int | None = None  # see MapOp.min_rows


def _fusable(up: PhysicalOp, op: MapOp) -> bool:
    if up.kind != "map" or isinstance(up.compute, ActorPoolStrategy) or op.min_rows:
        return False
    if up.min_rows and isinstance(op.compute, ActorPoolStrategy):
        return False  # a pool's calls take one block each
    if isinstance(op.compute, ActorPoolStrategy):
        # A pool absorbs plain task stages before it, the read included (as Ray fuses a task pool
        # into an actor pool): each actor reads its own blocks, so the reads run as wide as the pool
        # without tasks of their own competing with the actors for CPUs, and no block crosses the
        # store between the read and the pool.
        return not up.remote_args and up.concurrency is None
    return up.remote_args == op.remote_args and up.concurrency == op.concurrency


def physical_plan(op: LogicalOp) -> PhysicalOp:
    """Turn an optimized logical plan into physical operators, fusing map-like ones."""
    if isinstance(op, Read):
        return PhysicalOp("map", op.name, read=op, remote_args=dict(op.remote_args), concurrency=op.concurrency)
    if isinstance(op, InputData):
        return PhysicalOp("input", op.name, bundles=list(op.bundles))
    if isinstance(op, MapOp):
        up = physical_plan(op.inputs[0])
        if _fusable(up, op):
            up.name = f"{up.name}->{op.name}"
            up.stages.append(op.stage)
            up.compute, up.remote_args, up.concurrency = op.compute, op.remote_args, op.concurrency
            return up
        return PhysicalOp(
            "map", op.name, [up], [op.stage], None, op.compute, op.remote_args, op.concurrency, min_rows=op.min_rows
        )
    if isinstance(op, Limit):
        return PhysicalOp("limit", op.name, [physical_plan(op.inputs[0])], n=op.n)
    if isinstance(op, Union):
        return PhysicalOp("union", "Union", [physical_plan(i) for i in op.inputs])
    if isinstance(op, AllToAll):
        return PhysicalOp("barrier", op.name, [physical_plan(i) for i in op.inputs], fn=op.fn)
    raise TypeError(f"unknown logical operator {op!r}")


# Stages that never run a user function: a read fused with only these may make larger blocks.
_LIGHT_KINDS = frozenset({"select", "drop", "rename", "filter_expr", "with_columns"})


def read_tasks(op: PhysicalOp) -> list:
    """The read tasks of a map operator that starts with a read, planned for what it reads and runs:
    a source that can plan them again (``Read.plan_tasks``) sizes them for the columns read, and
    makes larger blocks when no user function runs in the tasks (nothing of the user's to keep in
    cache, and each block's fixed cost is paid fewer times)."""
    read = op.read
    if read.plan_tasks is None:
        return read.tasks
    light = op.compute is None and all(s.kind in _LIGHT_KINDS or s.light for s in op.stages)
    if read.filter is not None:
        return read.plan_tasks(read.columns, light, read.filter)
    return read.plan_tasks(read.columns, light)


def describe(op: PhysicalOp, indent: int = 0) -> list:
    """The physical plan as text lines, the consumer's end first."""
    lines = ["  " * indent + _physical_label(op)]
    for child in op.inputs:
        lines += describe(child, indent + 1)
    return lines


def _physical_label(op: PhysicalOp) -> str:
    label = op.name
    if op.kind == "map" and isinstance(op.compute, ActorPoolStrategy):
        label += f" [actors {op.compute.min_size}..{op.compute.max_size}]"
    return label + (_pushed_into(op.read) if op.read is not None else "")


def _pushed_into(read: Read) -> str:
    """What the optimizer pushed into a read (columns, a limit, a filter), as " (...)" or ""."""
    extras = [
        f"{what}={value}"
        for what, value in (("columns", read.columns), ("limit", read.limit), ("filter", read.filter))
        if value is not None
    ]
    return f" ({', '.join(extras)})" if extras else ""


def explanation(plan: LogicalOp) -> str:
    """Dataset.explain's text: the logical plan as written, as optimized, and the physical plan."""
    optimized = optimize(plan)
    sections = [
        ("Logical Plan", _tree(plan, _logical_label, lambda op: op.inputs)),
        ("Logical Plan (Optimized)", _tree(optimized, _logical_label, lambda op: op.inputs)),
        ("Physical Plan (Optimized)", _tree(physical_plan(optimized), _physical_label, lambda op: op.inputs)),
    ]
    return "\n\n".join(f"-------- {title} --------\n" + "\n".join(lines) for title, lines in sections)


def _logical_label(op: LogicalOp) -> str:
    return op.name + (_pushed_into(op) if isinstance(op, Read) else "")


def _tree(node, label, children, depth: int = 0) -> list:
    """``node`` and what it reads from, one line each, indented under it with ``+-``."""
    lines = [("   " * (depth - 1) + "+- " if depth else "") + label(node)]
    for child in children(node):
        lines += _tree(child, label, children, depth + 1)
    return lines
