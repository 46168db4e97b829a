"""Custom sources: ``Datasource`` (subclassed by users), the public ``ReadTask`` and ``read_datasource``.

A user's read tasks run where ember.data runs its own: the executor calls ``read(columns, limit)`` on
each, as on the internal ``sources.BlockReadTask``, so a custom source gets limits, column selection,
the memory budget and fusion with the maps after it like any built-in reader.
"""

import math
import warnings

import pyarrow as pa

from ember.data import block as blk
from ember.data.block import BlockMetadata
from ember.data.context import DataContext
from ember.data.datasink import Datasink, TaskContext, WriteResult  # noqa: F401 (ray.data.datasource has them too)
from ember.data.partitioning import Partitioning, PartitionStyle  # noqa: F401 (as in ray.data.datasource)
from ember.data.plan import Read
from ember.data.schema import Schema


def _optional_count(value, what: str):
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ValueError(f"{what} must be a non-negative int or None, got {value!r}.")
    return value


class ReadTask:
    """One read of a custom ``Datasource``, as Ray's ``ReadTask``: ``read_fn()`` (run in a worker)
    returns an iterable of pyarrow Tables or pandas DataFrames; ``metadata`` (a ``BlockMetadata``)
    estimates what it makes (num_rows, size_bytes, input_files), None where unknown; ``schema`` the
    schema of its blocks when known; ``per_task_row_limit`` caps the rows it yields.

    The blocks one task yields become one block of the dataset."""

    def __init__(self, read_fn, metadata: BlockMetadata, schema=None, per_task_row_limit: int | None = None):
        if not callable(read_fn):
            raise TypeError(f"read_fn must be callable, got {type(read_fn).__name__}.")
        if not isinstance(metadata, BlockMetadata):
            raise TypeError(f"metadata must be a BlockMetadata, got {type(metadata).__name__}.")
        if isinstance(schema, Schema):
            schema = schema.base_schema
        if schema is not None and not isinstance(schema, pa.Schema):
            raise TypeError(f"schema must be a pyarrow.Schema, a Schema or None, got {type(schema).__name__}.")
        self._read_fn, self._metadata, self._schema = read_fn, metadata, schema
        self._per_task_row_limit = _optional_count(per_task_row_limit, "per_task_row_limit")

    @property
    def read_fn(self):
        return self._read_fn

    @property
    def metadata(self) -> BlockMetadata:
        return self._metadata

    @property
    def schema(self):
        return self._schema if self._schema is not None else self._metadata.schema

    @property
    def per_task_row_limit(self):
        return self._per_task_row_limit

    # What the planner and the executor read from any read task (see sources.BlockReadTask).

    @property
    def num_rows(self):
        rows = self._metadata.num_rows
        if rows is None or self._per_task_row_limit is None:
            return rows
        return min(rows, self._per_task_row_limit)

    @property
    def size_bytes(self):
        return self._metadata.size_bytes

    @property
    def input_files(self) -> list:
        return list(self._metadata.input_files or ())

    def __call__(self):
        """The blocks ``read_fn`` makes, as pyarrow Tables, at most ``per_task_row_limit`` rows."""
        return self._blocks(self._per_task_row_limit)

    def _blocks(self, limit):
        result = self._read_fn()
        if isinstance(result, (pa.Table, pa.RecordBatch)) or type(result).__name__ == "DataFrame":
            # Iterating a table would give its columns: say what went wrong instead.
            raise TypeError(
                f"read_fn must return an iterable of blocks (such as [table]), got a {type(result).__name__}."
            )
        rows = 0
        for item in result:
            if limit is not None and rows >= limit:
                return
            table = blk.from_batch(item)
            if limit is not None and rows + table.num_rows > limit:
                table = table.slice(0, limit - rows)
            rows += table.num_rows
            yield table

    def read(self, columns=None, limit=None) -> pa.Table:
        """One block: everything ``read_fn`` yields, concatenated, then ``columns`` and ``limit``."""
        if self._per_task_row_limit is not None:
            limit = self._per_task_row_limit if limit is None else min(limit, self._per_task_row_limit)
        table = blk.concat(list(self._blocks(limit)))
        if not table.num_columns and not table.num_rows:
            # read_fn yielded nothing: an empty block, of the declared schema when there is one.
            if self.schema is None:
                return table
            table = self.schema.empty_table()
        return blk.trim(table, columns, limit)


class Datasource:
    """A custom source of data (Ray's ``Datasource``): subclass it, implement ``get_read_tasks`` and
    ``estimate_inmemory_data_size``, and pass an instance to ``read_datasource``."""

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list:
        """About ``parallelism`` ``ReadTask`` objects that together read all the data."""
        raise NotImplementedError

    def estimate_inmemory_data_size(self) -> int | None:
        """The data's size in memory in bytes, or None if unknown (it sizes the default parallelism)."""
        raise NotImplementedError

    def get_name(self) -> str:
        """The name of the read operator (``Read`` and this); the class name less "Datasource"."""
        name = type(self).__name__
        return name[: -len("Datasource")] if name.endswith("Datasource") and name != "Datasource" else name

    @property
    def supports_distributed_reads(self) -> bool:
        """False when the reads must run on the driver's node (local files, say)."""
        return True

    def create_reader(self, **read_args):
        """Deprecated in Ray: a reader (with ``get_read_tasks``) made from ``read_datasource``'s
        ``read_args``. Implement ``get_read_tasks`` instead."""
        raise NotImplementedError

    @property
    def should_create_reader(self) -> bool:
        return type(self).get_read_tasks is Datasource.get_read_tasks


def _parallelism(source, parallelism, override_num_blocks) -> int:
    from ember.data.sources import _min_blocks

    for value, what in ((override_num_blocks, "override_num_blocks"), (parallelism, "parallelism")):
        if value is not None and value != -1 and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{what} must be a positive int, got {value!r}.")
    if override_num_blocks is not None:
        return override_num_blocks
    if parallelism not in (None, -1):
        warnings.warn("parallelism is deprecated: use override_num_blocks.", DeprecationWarning, stacklevel=3)
        return parallelism
    ctx = DataContext.get_current()
    try:
        size = source.estimate_inmemory_data_size()
    except NotImplementedError:
        size = None
    by_size = math.ceil(size / ctx.target_max_block_size) if size else 0
    return max(_min_blocks(ctx), by_size)


def read_datasource(
    datasource: Datasource,
    *,
    parallelism: int = -1,
    num_cpus=None,
    num_gpus=None,
    memory=None,
    concurrency: int | None = None,
    override_num_blocks: int | None = None,
    ray_remote_args: dict | None = None,
    **read_args,
):
    """A dataset read by a custom ``Datasource``: its ``get_read_tasks`` is asked for
    ``override_num_blocks`` tasks (by default, enough for the cluster's CPUs and blocks of at most
    ``DataContext.target_max_block_size`` by ``estimate_inmemory_data_size``), each making one block.
    ``concurrency`` caps the read tasks running at once; ``ray_remote_args`` (and ``num_cpus``,
    ``num_gpus``, ``memory``) shape them. ``read_args`` go to a deprecated ``create_reader`` only,
    as in Ray."""
    from ember.data import dataset as ds

    if not isinstance(datasource, Datasource):
        raise TypeError(f"read_datasource expects a Datasource, got {type(datasource).__name__}.")
    remote_args, cap = task_options(
        "read_datasource",
        concurrency,
        ray_remote_args,
        datasource.supports_distributed_reads,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        memory=memory,
    )
    reader = datasource
    if datasource.should_create_reader:
        if type(datasource).create_reader is Datasource.create_reader:
            raise TypeError(
                f"{type(datasource).__name__} must implement get_read_tasks (and estimate_inmemory_data_size)."
            )
        warnings.warn(
            "Datasource.create_reader is deprecated: implement get_read_tasks and estimate_inmemory_data_size.",
            DeprecationWarning,
            stacklevel=2,
        )
        reader = datasource.create_reader(**read_args)
    tasks = reader.get_read_tasks(_parallelism(reader, parallelism, override_num_blocks))
    if not isinstance(tasks, (list, tuple)):
        raise TypeError(f"{type(datasource).__name__}.get_read_tasks must return a list, got {type(tasks).__name__}.")
    for task in tasks:
        if not isinstance(task, ReadTask):
            raise TypeError(
                f"{type(datasource).__name__}.get_read_tasks must return ReadTask objects, got {type(task).__name__}."
            )
    return ds.Dataset(Read(f"Read{datasource.get_name()}", list(tasks), remote_args=remote_args, concurrency=cap))


def task_options(what: str, concurrency, ray_remote_args, distributed: bool, **resources) -> tuple:
    """(remote args, concurrency cap) of a custom source's read tasks or a sink's write tasks; tasks
    that may not be distributed are pinned to the driver's node."""
    from ember.data import dataset as ds

    if ray_remote_args is not None and not isinstance(ray_remote_args, dict):
        raise TypeError(f"ray_remote_args must be a dict, got {type(ray_remote_args).__name__}.")
    _, cap = ds._compute_of(ds._noop, None, concurrency, what)
    remote_args = ds._remote_args(
        None, resources.get("num_cpus"), resources.get("num_gpus"), resources.get("memory"), ray_remote_args or {}
    )
    if not distributed:
        remote_args["scheduling_strategy"] = _driver_node()
    return remote_args, cap


def _driver_node():
    import ember
    from ember.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ember.get_runtime_context().get_node_id(), soft=False)
