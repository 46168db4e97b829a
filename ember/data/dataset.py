"""Dataset: a lazy plan of transforms over Arrow blocks, with Ray Data's methods."""

import html
import inspect
import itertools

import pyarrow as pa

import ember
from ember.data import block as blk
from ember.data import iterator as it
from ember.data.dataset_all_to_all import AllToAllMethods
from ember.data.dataset_expressions import ExpressionMethods, schema_after
from ember.data.dataset_output import OutputMethods
from ember.data.executor import Executor
from ember.data.plan import (
    ActorPoolStrategy,
    AllToAll,
    InputData,
    Limit,
    MapOp,
    Read,
    Stage,
    TaskPoolStrategy,
    Union,
    check_runs_as_tasks,
    describe,
    explanation,
    fn_name,
    optimize,
    physical_plan,
)


def _noop():
    pass


def _compute_of(fn, compute, concurrency, what: str):
    """Ray's rules: a callable class runs on an actor pool (sized by ``concurrency`` or ``compute``),
    a function as tasks (at most ``concurrency`` at once when given)."""
    if not callable(fn):
        raise TypeError(f"{what}: fn must be a function or a callable class, got {type(fn).__name__}.")
    is_class = inspect.isclass(fn)
    if is_class and "__call__" not in dir(fn):
        raise TypeError(f"{what}: the class {fn.__name__} must define __call__.")
    if isinstance(compute, ActorPoolStrategy):
        if not is_class:
            raise ValueError(f"{what}: an ActorPoolStrategy needs a callable class, not a function.")
        return compute, None
    if compute is not None and not isinstance(compute, TaskPoolStrategy) and compute != "tasks":
        raise ValueError(f"{what}: compute must be an ActorPoolStrategy or a TaskPoolStrategy, got {compute!r}.")
    if is_class:
        if isinstance(concurrency, int) and not isinstance(concurrency, bool):
            return ActorPoolStrategy(concurrency, concurrency), None
        if isinstance(concurrency, tuple) and len(concurrency) == 2:
            return ActorPoolStrategy(*concurrency), None
        raise ValueError(f"{what}: ``concurrency`` must be an int or a (min, max) tuple for a callable class.")
    if concurrency is not None and (
        not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1
    ):
        raise ValueError(f"{what}: ``concurrency`` of a function must be a positive int, got {concurrency!r}.")
    size = compute.size if isinstance(compute, TaskPoolStrategy) else None
    return None, concurrency or size


def _remote_args(compute, num_cpus, num_gpus, memory, remote_args: dict) -> dict:
    args = dict(remote_args)
    for key, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus), ("memory", memory)):
        if value is not None:
            args[key] = value
    probe = {k: v for k, v in args.items() if k not in ("max_restarts", "max_task_retries")}
    ember.remote(**probe)(_noop)  # unknown or bad options fail here, at the call, as in Ray
    return args


class Dataset(AllToAllMethods, OutputMethods, ExpressionMethods):
    """A distributed collection of rows in Arrow blocks, built lazily from a logical plan.

    Transforms return a new Dataset; nothing runs until the data is consumed (iterated, taken,
    counted, written or materialized).
    """

    def __init__(self, plan):
        self._plan = plan
        self._last_stats = None
        self._name = None

    # ---- transforms --------------------------------------------------------------------------

    def _map(
        self,
        kind,
        fn,
        name,
        *,
        compute=None,
        concurrency=None,
        num_cpus=None,
        num_gpus=None,
        memory=None,
        fn_args=None,
        fn_kwargs=None,
        fn_constructor_args=None,
        fn_constructor_kwargs=None,
        keeps_rows=False,
        remote_args=None,
        **stage_args,
    ):
        pool, cap = _compute_of(fn, compute, concurrency, name)
        if (fn_constructor_args or fn_constructor_kwargs) and not inspect.isclass(fn):
            raise ValueError(f"{name}: fn_constructor_args/kwargs are only for a callable class.")
        stage = Stage(
            kind,
            fn,
            tuple(fn_args or ()),
            dict(fn_kwargs or {}),
            tuple(fn_constructor_args or ()),
            dict(fn_constructor_kwargs or {}),
            **stage_args,
        )
        args = _remote_args(pool, num_cpus, num_gpus, memory, remote_args or {})
        label = f"{name}({fn_name(fn)})"
        return Dataset(MapOp(label, self._plan, stage, pool, args, keeps_rows, cap))

    def map(
        self,
        fn,
        *,
        compute=None,
        fn_args=None,
        fn_kwargs=None,
        fn_constructor_args=None,
        fn_constructor_kwargs=None,
        num_cpus=None,
        num_gpus=None,
        memory=None,
        concurrency=None,
        **remote_args,
    ):
        """Apply ``fn(row) -> row`` to each row (a dict of column values)."""
        return self._map(
            "map",
            fn,
            "Map",
            compute=compute,
            concurrency=concurrency,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            memory=memory,
            fn_args=fn_args,
            fn_kwargs=fn_kwargs,
            fn_constructor_args=fn_constructor_args,
            fn_constructor_kwargs=fn_constructor_kwargs,
            keeps_rows=True,
            remote_args=remote_args,
        )

    def map_batches(
        self,
        fn,
        *,
        batch_size="default",
        compute=None,
        batch_format="default",
        zero_copy_batch=True,
        fn_args=None,
        fn_kwargs=None,
        fn_constructor_args=None,
        fn_constructor_kwargs=None,
        num_cpus=None,
        num_gpus=None,
        memory=None,
        concurrency=None,
        **remote_args,
    ):
        """Apply ``fn(batch) -> batch`` to batches of rows.

        A batch is a dict of numpy arrays (``"default"``/``"numpy"``), a pandas DataFrame
        (``"pandas"``) or a pyarrow Table (``"pyarrow"``); ``fn`` may also yield several batches.
        ``batch_size=None`` (or ``"default"``) hands each block over whole. A callable class runs
        on an actor pool sized by ``concurrency=n`` or ``(min, max)``, built once per actor with
        ``fn_constructor_args``/``fn_constructor_kwargs``.
        """
        batch_format = blk.check_batch_format(batch_format)
        if batch_size == "default":
            batch_size = None
        if batch_size is not None and (
            not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
        ):
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}.")
        return self._map(
            "map_batches",
            fn,
            "MapBatches",
            compute=compute,
            concurrency=concurrency,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            memory=memory,
            fn_args=fn_args,
            fn_kwargs=fn_kwargs,
            fn_constructor_args=fn_constructor_args,
            fn_constructor_kwargs=fn_constructor_kwargs,
            remote_args=remote_args,
            batch_size=batch_size,
            batch_format=batch_format,
            zero_copy=bool(zero_copy_batch),
        )

    def flat_map(
        self,
        fn,
        *,
        compute=None,
        fn_args=None,
        fn_kwargs=None,
        fn_constructor_args=None,
        fn_constructor_kwargs=None,
        num_cpus=None,
        num_gpus=None,
        memory=None,
        concurrency=None,
        **remote_args,
    ):
        """Apply ``fn(row) -> list of rows`` to each row and flatten the results."""
        return self._map(
            "flat_map",
            fn,
            "FlatMap",
            compute=compute,
            concurrency=concurrency,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            memory=memory,
            fn_args=fn_args,
            fn_kwargs=fn_kwargs,
            fn_constructor_args=fn_constructor_args,
            fn_constructor_kwargs=fn_constructor_kwargs,
            remote_args=remote_args,
        )

    def filter(
        self,
        fn=None,
        expr=None,
        *,
        compute=None,
        fn_args=None,
        fn_kwargs=None,
        fn_constructor_args=None,  # noqa: A003
        fn_constructor_kwargs=None,
        num_cpus=None,
        num_gpus=None,
        memory=None,
        concurrency=None,
        **remote_args,
    ):
        """Keep the rows for which ``fn(row)`` is true, or that match ``expr``: an ``Expr`` such as
        ``(col("x") > 0.5) & (col("key") != 3)``, Ray's string form ``"x > 0.5 and key != 3"`` or a
        pyarrow Expression, evaluated by Arrow on whole blocks (and, right after ``read_parquet``,
        inside its scan)."""
        if expr is not None:
            if fn is not None:
                raise ValueError("filter: give either fn or expr, not both.")
            return self._filter_expr(expr, num_cpus, num_gpus, memory, concurrency, remote_args)
        return self._map(
            "filter",
            fn,
            "Filter",
            compute=compute,
            concurrency=concurrency,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            memory=memory,
            fn_args=fn_args,
            fn_kwargs=fn_kwargs,
            fn_constructor_args=fn_constructor_args,
            fn_constructor_kwargs=fn_constructor_kwargs,
            remote_args=remote_args,
        )

    def add_column(self, col: str, fn, *, batch_format="pandas", compute=None, concurrency=None, **remote_args):
        """Add (or replace) the column ``col`` with ``fn(batch)``'s values, one per row."""
        if not isinstance(col, str):
            raise TypeError(f"add_column: col must be a str, got {type(col).__name__}.")
        return self._map(
            "add_column",
            fn,
            "AddColumn",
            compute=compute,
            concurrency=concurrency,
            keeps_rows=True,
            remote_args=remote_args,
            batch_format=blk.check_batch_format(batch_format),
            extra=col,
        )

    def _columns_op(self, kind, name, extra, remote_args=None, concurrency=None):
        stage = Stage(kind, extra=extra)
        return Dataset(MapOp(name, self._plan, stage, None, remote_args, keeps_rows=True, concurrency=concurrency))

    def select_columns(
        self, cols, *, compute=None, concurrency=None, num_cpus=None, num_gpus=None, memory=None, **ray_remote_args
    ):
        """Keep only the columns ``cols`` (a name or a list of names, in that order)."""
        cols = [cols] if isinstance(cols, str) else list(cols)
        bad = [c for c in cols if not isinstance(c, str)]
        if bad:
            raise TypeError(f"select_columns: cols must be column names (str), got {bad!r}.")
        if len(set(cols)) != len(cols):
            raise ValueError(f"select_columns: duplicate column names in {cols}.")
        check_runs_as_tasks(compute, "select_columns")
        args = _remote_args(None, num_cpus, num_gpus, memory, ray_remote_args)
        return self._columns_op("select", f"SelectColumns({cols})", cols, args, concurrency)

    def drop_columns(self, cols):
        """Remove the columns ``cols``."""
        cols = [cols] if isinstance(cols, str) else list(cols)
        return self._columns_op("drop", f"DropColumns({cols})", cols)

    def rename_columns(self, names):
        """Rename columns: a dict {old: new}, or a list of new names for every column."""
        if isinstance(names, list):
            old = self.columns()
            if len(names) != len(old):
                raise ValueError(f"rename_columns: {len(names)} names for {len(old)} columns {old}.")
            names = dict(zip(old, names))
        if not isinstance(names, dict):
            raise TypeError("rename_columns expects a dict {old: new} or a list of names.")
        return self._columns_op("rename", f"RenameColumns({names})", dict(names))

    def limit(self, limit: int) -> "Dataset":
        """The first ``limit`` rows; the read stops as soon as it has produced them."""
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise ValueError(f"limit must be a non-negative int, got {limit!r}.")
        return Dataset(Limit(self._plan, limit))

    def union(self, *others) -> "Dataset":
        """The rows of this dataset followed by those of ``others``."""
        for other in others:
            if not isinstance(other, Dataset):
                raise TypeError(f"union expects Datasets, got {type(other).__name__}.")
        return Dataset(Union([self._plan] + [o._plan for o in others]))

    def zip(self, other: "Dataset") -> "Dataset":
        """Row i of the result has the columns of row i of both datasets (equal row counts needed);
        a name in both gets the suffix ``_1`` on the right."""
        if not isinstance(other, Dataset):
            raise TypeError(f"zip expects a Dataset, got {type(other).__name__}.")
        from ember.data.all_to_all import zip_blocks

        return Dataset(AllToAll("Zip", [self._plan, other._plan], zip_blocks))

    # ---- execution ---------------------------------------------------------------------------

    def _bundles(self, progress: bool = True, ledger=None):
        """Run the plan: (block_ref, BlockMetadata) in order, streaming (``ledger``: how the executor
        counts the blocks its consumer holds, when a prefetch thread runs it)."""
        plan = self._plan
        if isinstance(plan, InputData):
            yield from plan.bundles
            return
        from ember.data.progress import reporter

        shown = reporter(name=self._name) if progress else None
        executor = Executor(physical_plan(optimize(plan)), progress=shown, ledger=ledger)
        self._last_stats = executor.stats
        yield from executor.run()

    def _physical(self):
        return physical_plan(optimize(self._plan))

    def materialize(self) -> "MaterializedDataset":
        """Run the plan and keep every block in the object store."""
        bundles = list(self._bundles())
        result = MaterializedDataset(InputData(bundles, "Materialized"))
        result._last_stats = self._last_stats
        result._source_plan = describe(self._physical())
        return result

    # ---- consumption -------------------------------------------------------------------------

    def iter_batches(
        self,
        *,
        prefetch_batches: int = 1,
        batch_size: int | None = 256,
        batch_format="default",
        drop_last: bool = False,
        local_shuffle_buffer_size: int | None = None,
        local_shuffle_seed: int | None = None,
    ):
        """Iterate over batches of ``batch_size`` rows (across block boundaries) in ``batch_format``."""
        return self.iterator().iter_batches(
            prefetch_batches=prefetch_batches,
            batch_size=batch_size,
            batch_format=batch_format,
            drop_last=drop_last,
            local_shuffle_buffer_size=local_shuffle_buffer_size,
            local_shuffle_seed=local_shuffle_seed,
        )

    def iter_rows(self):
        """Iterate over the rows, each a dict."""
        return self.iterator().iter_rows()

    def iter_torch_batches(
        self,
        *,
        batch_size: int | None = 256,
        dtypes=None,
        device="auto",
        drop_last=False,
        local_shuffle_buffer_size=None,
        local_shuffle_seed=None,
        prefetch_batches=1,
    ):
        """Iterate over batches as dicts of torch tensors (needs torch)."""
        return self.iterator().iter_torch_batches(
            batch_size=batch_size,
            dtypes=dtypes,
            device=device,
            drop_last=drop_last,
            local_shuffle_buffer_size=local_shuffle_buffer_size,
            local_shuffle_seed=local_shuffle_seed,
            prefetch_batches=prefetch_batches,
        )

    def iterator(self):
        """A ``DataIterator`` over this dataset (each pass runs it again)."""
        from ember.data.data_iterator import DatasetIterator

        return DatasetIterator(self)

    def take(self, limit: int = 20) -> list:
        """The first ``limit`` rows as dicts."""
        return list(itertools.islice(self.limit(limit).iter_rows(), limit))

    def take_all(self, limit: int | None = None) -> list:
        """Every row as a dict (ValueError past ``limit`` rows when given)."""
        rows = list(self.iter_rows())
        if limit is not None and len(rows) > limit:
            raise ValueError(f"The dataset has more than the given limit of {limit} rows.")
        return rows

    def take_batch(self, batch_size: int = 20, *, batch_format="default"):
        """Up to ``batch_size`` rows as one batch."""
        batch_format = blk.check_batch_format(batch_format)
        table = it.fetch_table(self.limit(batch_size)._bundles())
        if table.num_rows == 0:
            raise ValueError("The dataset is empty.")
        return blk.to_batch(table, batch_format)

    def show(self, limit: int = 20) -> None:
        """Print the first ``limit`` rows."""
        for row in self.take(limit):
            print(row)

    def count(self) -> int:
        """The number of rows; from metadata alone when the plan allows, else by running it
        (blocks are counted where they are, never fetched)."""
        known = _known_rows(self._plan)
        if known is not None:
            return known
        return sum(meta.num_rows for _, meta in self._bundles())

    def schema(self):
        """The columns' names and types (a ``Schema``; None for a dataset without rows), from
        metadata when the plan allows, else from the first block produced."""
        from ember.data.schema import Schema

        found = self._arrow_schema()
        return None if found is None else Schema(found)

    def _arrow_schema(self):
        known = _known_schema(self._plan)
        if known is not None:
            return known
        gen = self._bundles()
        try:
            fallback = None
            for _, meta in gen:
                if meta.schema is not None and meta.schema.names:
                    if meta.num_rows:
                        return meta.schema
                    fallback = fallback or meta.schema
            return fallback
        finally:
            gen.close()

    def columns(self) -> list:
        """The column names."""
        schema = self.schema()
        return list(schema.names) if schema is not None else []

    def stats(self) -> str:
        """What the last execution of this dataset did, per operator."""
        if self._last_stats is None:
            return "No execution yet: the dataset has not been consumed."
        return self._last_stats.summary()

    @property
    def name(self) -> str | None:
        """The name given with ``set_name`` (shown in the execution's progress), or None."""
        return self._name

    def set_name(self, name: str | None) -> None:
        """Name this dataset: its executions' progress widget and log lines carry the name."""
        if name is not None and not isinstance(name, str):
            raise TypeError(f"set_name: name must be a str or None, got {type(name).__name__}.")
        self._name = name

    def explain(self) -> None:
        """Print the logical plan as written, as the optimizer rewrites it (limits and column
        selections pushed into reads), and the physical plan that runs (fused operators)."""
        print(explanation(self._plan))

    # ---- display -----------------------------------------------------------------------------

    def _plan_lines(self) -> list:
        return describe(self._physical())

    def __repr__(self):
        rows = _known_rows(self._plan)
        schema = _known_schema(self._plan)
        fields = ", ".join(f"{n}: {t}" for n, t in zip(schema.names, schema.types)) if schema is not None else "?"
        return f"{type(self).__name__}(num_rows={rows if rows is not None else '?'}, schema={{{fields}}})"

    def _repr_html_(self):
        lines = self._plan_lines()
        schema = _known_schema(self._plan)
        parts = [
            f"<div class='ember-dataset'><b>{type(self).__name__}</b>",
            "<pre>" + html.escape("\n".join(lines)) + "</pre>",
        ]
        if schema is not None:
            parts.append(
                "<table><tr><th>column</th><th>type</th></tr>"
                + "".join(
                    f"<tr><td>{html.escape(n)}</td><td>{html.escape(str(t))}</td></tr>"
                    for n, t in zip(schema.names, schema.types)
                )
                + "</table>"
            )
        if isinstance(self._plan, InputData) and self._plan.bundles:
            parts.append(blk.to_pandas(it.fetch_table(iter(self._plan.bundles[:1])).slice(0, 5)).to_html())
        return "\n".join(parts) + "</div>"


class MaterializedDataset(Dataset):
    """A Dataset whose blocks are already in the object store."""

    def num_blocks(self) -> int:
        return len(self._plan.bundles)

    def _plan_lines(self):
        return getattr(self, "_source_plan", None) or [self._plan.name]


def _known_rows(plan):
    if isinstance(plan, InputData):
        return sum(meta.num_rows for _, meta in plan.bundles)
    if isinstance(plan, Read) and all(t.num_rows is not None for t in plan.tasks):
        rows = sum(t.num_rows for t in plan.tasks)
        return rows if plan.limit is None else min(rows, plan.limit)
    if isinstance(plan, Limit):
        inner = _known_rows(plan.inputs[0])
        return None if inner is None else min(inner, plan.n)
    if isinstance(plan, Union):
        counts = [_known_rows(p) for p in plan.inputs]
        return None if None in counts else sum(counts)
    return None


def _known_schema(plan):
    if isinstance(plan, InputData):
        for _, meta in plan.bundles:
            if meta.schema is not None and meta.schema.names:
                return meta.schema
        return None
    if isinstance(plan, Read) and plan.tasks and all(t.schema is not None for t in plan.tasks):
        schema = plan.tasks[0].schema
        return schema if plan.columns is None else pa.schema([schema.field(c) for c in plan.columns])
    if isinstance(plan, Limit):
        return _known_schema(plan.inputs[0])
    if isinstance(plan, MapOp) and plan.stage.kind in ("select", "drop", "rename", "filter_expr", "with_columns"):
        inner = _known_schema(plan.inputs[0])
        if inner is None:
            return None
        stage = plan.stage
        if stage.kind == "filter_expr":
            return inner
        if stage.kind == "with_columns":
            return schema_after(stage, inner)
        if stage.kind == "select":
            return pa.schema([inner.field(c) for c in stage.extra]) if set(stage.extra) <= set(inner.names) else None
        if stage.kind == "drop":
            return pa.schema([f for f in inner if f.name not in stage.extra])
        return pa.schema([f.with_name(stage.extra.get(f.name, f.name)) for f in inner])
    return None
