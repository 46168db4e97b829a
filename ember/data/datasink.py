"""Custom writes: ``Datasink`` (subclassed by users), ``WriteResult`` and ``Dataset.write_datasink``.

A write to a sink runs as the file writes do, one map stage over the dataset's blocks: each task
calls ``datasink.write`` on its blocks and returns one row (rows, bytes, the pickled write return),
which the driver gathers into the ``WriteResult`` handed to ``on_write_complete``::

    driver: on_write_start(schema) -> tasks: write(blocks, ctx) -> driver: on_write_complete(result)
                                  (any error: on_write_failed(error), then it propagates)
"""

import inspect
import itertools
import uuid
from dataclasses import dataclass, field

import pyarrow as pa

from ember.data.block import object_array


@dataclass
class WriteResult:
    """What a whole write did (Ray's ``WriteResult``): the rows and in-memory bytes written and
    every write task's return value from ``Datasink.write``, in the order of the dataset's blocks."""

    num_rows: int
    size_bytes: int
    write_returns: list

    @classmethod
    def combine(cls, *results: "WriteResult") -> "WriteResult":
        return cls(
            sum(r.num_rows for r in results),
            sum(r.size_bytes for r in results),
            list(itertools.chain.from_iterable(r.write_returns for r in results)),
        )


@dataclass
class TaskContext:
    """What a write task knows about itself: its index among the write's tasks, the operator's name,
    and ``kwargs`` (``"write_uuid"``: one id for the whole write, for naming its files apart)."""

    task_idx: int
    op_name: str = "Write"
    kwargs: dict = field(default_factory=dict)


class Datasink:
    """A custom destination for ``Dataset.write_datasink`` (Ray's ``Datasink``): subclass it and
    implement ``write``; the callbacks run on the driver, ``write`` in the write tasks (each task
    gets its own unpickled copy of the sink, so state set in ``write`` stays in the task: return it)."""

    def on_write_start(self, schema=None) -> None:
        """Called once on the driver before any write task runs; ``schema`` (a pyarrow.Schema) when
        known without running the dataset, else None."""

    def write(self, blocks, ctx: TaskContext):
        """Write ``blocks`` (an iterable of pyarrow Tables) in one task; the return value reaches
        ``on_write_complete`` in ``WriteResult.write_returns``."""
        raise NotImplementedError

    def on_write_complete(self, write_result: WriteResult) -> None:
        """Called once on the driver after every write task succeeded."""

    def on_write_failed(self, error: Exception) -> None:
        """Called on the driver when the write failed, with the error about to be raised."""

    def get_name(self) -> str:
        """The class name, less a leading underscore and a trailing "Datasink"."""
        name = type(self).__name__.removeprefix("_")
        return name[: -len("Datasink")] if name.endswith("Datasink") and name != "Datasink" else name

    @property
    def supports_distributed_writes(self) -> bool:
        """False when the write tasks must run on the driver's node."""
        return True

    @property
    def min_rows_per_write(self) -> int | None:
        """At least this many rows per write task (consecutive blocks gathered; the last task may
        have fewer), or None for a task per block."""
        return None

    @property
    def min_bytes_per_write(self) -> int | None:
        return None


class _SinkWriter:
    """The stage function of a write to a sink: one ``datasink.write`` call per task."""

    def __init__(self, datasink: Datasink, op_name: str):
        self.datasink, self.op_name = datasink, op_name
        self.write_uuid = uuid.uuid4().hex
        self.__name__ = f"write_{op_name}"

    def __call__(self, table: pa.Table, index: int) -> pa.Table:
        ctx = TaskContext(index, self.op_name, {"write_uuid": self.write_uuid})
        returned = self.datasink.write([table], ctx)
        # Pickled whatever it is: a return Arrow could type (a dict, a tuple) would otherwise come
        # back changed (a struct's dict, a list).
        returns = object_array([returned])
        return pa.table(
            {"num_rows": pa.array([table.num_rows], pa.int64()), "size_bytes": [table.nbytes], "write_return": returns}
        )


def _start(datasink: Datasink, schema) -> None:
    try:
        params = inspect.signature(datasink.on_write_start).parameters
    except (TypeError, ValueError):
        params = None
    if params is not None and not params:  # a sink written for Ray before on_write_start took the schema
        datasink.on_write_start()
    else:
        datasink.on_write_start(schema)


def write_datasink(dataset, datasink: Datasink, ray_remote_args, concurrency) -> None:
    """``Dataset.write_datasink``'s body (see there)."""
    from ember.data import dataset as ds
    from ember.data import iterator as it
    from ember.data.datasource import task_options
    from ember.data.plan import MapOp, Stage

    if not isinstance(datasink, Datasink):
        raise TypeError(f"write_datasink expects a Datasink, got {type(datasink).__name__}.")
    remote_args, cap = task_options(
        "write_datasink", concurrency, ray_remote_args, datasink.supports_distributed_writes
    )
    min_rows = datasink.min_rows_per_write
    if min_rows is not None and (not isinstance(min_rows, int) or isinstance(min_rows, bool) or min_rows < 1):
        raise ValueError(
            f"{type(datasink).__name__}.min_rows_per_write must be a positive int or None, got {min_rows!r}."
        )
    if datasink.min_bytes_per_write is not None:
        # Refused rather than ignored: a sink that asks for it counts on writes of at least that size.
        raise NotImplementedError(
            f"{type(datasink).__name__}.min_bytes_per_write is not supported yet: use min_rows_per_write."
        )
    name = "Write"
    stage = Stage("write", _SinkWriter(datasink, name))
    written = ds.Dataset(MapOp(name, dataset._plan, stage, None, remote_args, False, cap, min_rows=min_rows))
    try:
        _start(datasink, ds._known_schema(dataset._plan))
        rows = it.fetch_table(written._bundles())
        result = WriteResult(0, 0, [])
        if rows.num_rows:
            # The returns come back as the objects: a pickled column's values unpickle themselves.
            result = WriteResult(
                sum(rows.column("num_rows").to_pylist()),
                sum(rows.column("size_bytes").to_pylist()),
                rows.column("write_return").to_pylist(),
            )
        datasink.on_write_complete(result)
    except Exception as error:
        datasink.on_write_failed(error)
        raise
    finally:
        dataset._last_stats = written._last_stats
