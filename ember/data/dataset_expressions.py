"""Dataset's expression methods (``with_column``, ``with_columns``, ``filter(expr=...)``), kept apart
from the rest of the class: each becomes one stage Arrow evaluates on whole blocks, fused with the
map-like stages around it, and an expression filter right after a Parquet read moves into its scan."""

from collections.abc import Mapping

import pyarrow as pa

from ember.data.expressions import Expr, referenced_columns, to_expression
from ember.data.plan import MapOp, Stage, check_runs_as_tasks, with_columns


def _dataset():
    from ember.data import dataset

    return dataset


class ExpressionMethods:
    """Mixed into Dataset: transforms given as expressions (``ember.data.expressions``)."""

    def _check_on_schema(self, what: str, reads, run):
        """Fail at the call, when the schema is known without running anything (metadata of a read,
        materialized blocks), for a column that is not there or an expression Arrow cannot evaluate
        on these types: ``run`` evaluates it on an empty table of that schema."""
        schema = _dataset()._known_schema(self._plan)
        if schema is None:
            return
        if reads:
            missing = sorted(set(reads) - set(schema.names))
            if missing:
                raise ValueError(f"{what}: no column(s) {missing} in the dataset's columns {schema.names}.")
        run(schema.empty_table())

    def _filter_expr(self, expr, num_cpus, num_gpus, memory, concurrency, remote_args):
        dataset = _dataset()
        predicate = to_expression(expr)
        reads = referenced_columns(expr)
        stage = Stage("filter_expr", extra=predicate, reads=None if reads is None else frozenset(reads))
        self._check_on_schema(f"filter(expr={expr})", reads, lambda empty: stage.apply(empty))
        args = dataset._remote_args(None, num_cpus, num_gpus, memory, remote_args)
        return dataset.Dataset(MapOp(f"Filter({expr})", self._plan, stage, None, args, False, concurrency))

    def with_column(
        self, column_name: str, expr, *, compute=None, num_cpus=None, num_gpus=None, memory=None, **ray_remote_args
    ):
        """Add the column ``column_name`` (or replace it, in place) with the values of ``expr``, an
        ``Expr`` such as ``col("price") * col("qty")``, evaluated by Arrow on whole blocks."""
        if not isinstance(column_name, str) or not column_name:
            raise TypeError(f"with_column: column_name must be a non-empty str, got {column_name!r}.")
        return self._with_columns(
            "with_column", {column_name: expr}, compute, num_cpus, num_gpus, memory, ray_remote_args
        )

    def with_columns(
        self, exprs=None, *more_exprs, compute=None, num_cpus=None, num_gpus=None, memory=None, **ray_remote_args
    ):
        """Add or replace several columns at once: ``exprs`` (and any further positional arguments)
        map a column name to an ``Expr``; every expression reads the input columns, in one stage.
        Ray's ``unnest(...)`` arguments are not supported."""
        merged = {}
        for group in (exprs, *more_exprs):
            if not isinstance(group, Mapping):
                raise TypeError(
                    f"with_columns: expected a mapping of column name to Expr, got {type(group).__name__}"
                    " (unnest expressions are not supported)."
                )
            for name, expr in group.items():
                if not isinstance(name, str) or not name:
                    raise TypeError(f"with_columns: column names must be non-empty strs, got {name!r}.")
                merged[name] = expr
        if not merged:
            raise ValueError("with_columns: no expressions given.")
        return self._with_columns("with_columns", merged, compute, num_cpus, num_gpus, memory, ray_remote_args)

    def _with_columns(self, what, exprs: dict, compute, num_cpus, num_gpus, memory, remote_args):
        dataset = _dataset()
        check_runs_as_tasks(compute, what)
        columns, reads = [], set()
        for name, expr in exprs.items():
            if not isinstance(expr, Expr):
                raise TypeError(
                    f"{what}: the expression for {name!r} must be an ember.data.expressions.Expr "
                    f"(col(...), lit(...)), got {type(expr).__name__}."
                )
            columns.append((name, expr.to_pyarrow()))
            reads |= expr.columns()
        label = ", ".join(f"{n}={e!r}" for n, e in exprs.items())
        self._check_on_schema(f"{what}({label})", reads, lambda empty: with_columns(empty, columns))
        stage = Stage("with_columns", extra=columns, reads=frozenset(reads))
        args = dataset._remote_args(None, num_cpus, num_gpus, memory, remote_args)
        name = "WithColumn" if what == "with_column" else "WithColumns"
        return dataset.Dataset(MapOp(f"{name}({', '.join(exprs)})", self._plan, stage, None, args, keeps_rows=True))


def schema_after(stage: Stage, schema: pa.Schema) -> pa.Schema | None:
    """The schema a ``with_columns`` stage makes of ``schema``, from an empty table (no data read)."""
    try:
        return with_columns(schema.empty_table(), stage.extra).schema
    except (KeyError, TypeError):
        return None
