"""SQL databases through any Python DB API 2 connector (PEP 249): ``read_sql`` and
``Dataset.write_sql``, with Ray's arguments, built on the public ``Datasource`` and ``Datasink``.

A read runs the query in one task, or with ``shard_keys`` in ``override_num_blocks`` tasks that each
take the rows whose hashed keys fall in their shard, where the database has the functions for it
(MOD, ABS, CONCAT and the hash); a write runs ``executemany`` on each block and commits per task.
"""

import contextlib
import functools
import warnings

import pyarrow as pa

from ember.data.block import BlockMetadata
from ember.data.datasink import Datasink
from ember.data.datasource import Datasource, ReadTask, read_datasource

FETCH_ROWS = 10_000  # rows fetched at a time: a block is built from batches, not one huge list


@contextlib.contextmanager
def _cursor(connection_factory):
    connection = connection_factory()
    missing = [name for name in ("close", "commit", "cursor") if not hasattr(connection, name)]
    if missing:
        raise ValueError(
            f"connection_factory returned a {type(connection).__name__} without {', '.join(missing)}: "
            "it must return a Python DB API 2 connection (PEP 249)."
        )
    try:
        cursor = connection.cursor()
        try:
            yield connection, cursor
        finally:
            cursor.close()
    finally:
        connection.close()


def _query(connection_factory, sql: str):
    """The rows ``sql`` returns, as pyarrow Tables of at most FETCH_ROWS rows (a read task's body)."""
    with _cursor(connection_factory) as (_, cursor):
        cursor.execute(sql)
        names = [column[0] for column in cursor.description or ()]
        first = True
        while True:
            rows = cursor.fetchmany(FETCH_ROWS)
            if rows or first:  # an empty result still names its columns
                yield pa.table({name: [row[i] for row in rows] for i, name in enumerate(names)})
            first = False
            if len(rows) < FETCH_ROWS:
                return


def _check_query(sql, connection_factory) -> None:
    if not isinstance(sql, str):
        raise TypeError(f"sql must be a str, got {type(sql).__name__}.")
    if not callable(connection_factory):
        raise TypeError(f"connection_factory must be callable, got {type(connection_factory).__name__}.")


class SQLDatasource(Datasource):
    """The rows of one SQL query, sharded by ``shard_keys`` where the database can hash them."""

    def __init__(self, sql: str, connection_factory, shard_keys=None, shard_hash_fn: str = "MD5"):
        _check_query(sql, connection_factory)
        if shard_keys is not None and (
            isinstance(shard_keys, str) or not shard_keys or not all(isinstance(k, str) for k in shard_keys)
        ):
            raise TypeError(f"shard_keys must be a non-empty list of column names, got {shard_keys!r}.")
        if not isinstance(shard_hash_fn, str) or not shard_hash_fn.isidentifier():
            raise ValueError(f"shard_hash_fn must be the name of a SQL function, got {shard_hash_fn!r}.")
        self.sql, self.connection_factory = sql, connection_factory
        self.shard_keys, self.shard_hash_fn = shard_keys, shard_hash_fn

    def estimate_inmemory_data_size(self):
        return None

    def _shard(self, index: int, count: int) -> str:
        keys = f"CONCAT({', '.join(self.shard_keys)})"
        return f"SELECT * FROM ({self.sql}) AS shard WHERE MOD(ABS({self.shard_hash_fn}({keys})), {count}) = {index}"

    def supports_sharding(self, parallelism: int) -> bool:
        """Whether the database runs the shard query (it has MOD, ABS, CONCAT and the hash)."""
        try:
            with _cursor(self.connection_factory) as (_, cursor):
                cursor.execute(f"{self._shard(0, parallelism)} LIMIT 1")
                cursor.fetchall()
        except Exception:
            return False
        return True

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list:
        def task(sql):
            return ReadTask(
                functools.partial(_query, self.connection_factory, sql),
                BlockMetadata(num_rows=None, size_bytes=None),
                per_task_row_limit=per_task_row_limit,
            )

        if self.shard_keys and parallelism > 1:
            if self.supports_sharding(parallelism):
                return [task(self._shard(i, parallelism)) for i in range(parallelism)]
            warnings.warn(
                f"The database cannot shard by {self.shard_hash_fn}(CONCAT(...)) with MOD and ABS: "
                "read_sql runs the query in one task.",
                stacklevel=4,
            )
        return [task(self.sql)]


def read_sql(
    sql: str,
    connection_factory,
    *,
    shard_keys=None,
    shard_hash_fn: str = "MD5",
    parallelism: int = -1,
    num_cpus=None,
    num_gpus=None,
    memory=None,
    ray_remote_args=None,
    concurrency=None,
    override_num_blocks=None,
):
    """Read the rows of the query ``sql`` from a database with a Python DB API 2 connector;
    ``connection_factory()`` opens a connection (in each read task). Without ``shard_keys`` one task
    runs the query; with them, ``override_num_blocks`` tasks each read the rows where
    ``MOD(ABS(shard_hash_fn(CONCAT(keys))), n)`` is theirs, or one task (with a warning) where the
    database lacks those functions."""
    return read_datasource(
        SQLDatasource(sql, connection_factory, shard_keys, shard_hash_fn),
        parallelism=parallelism,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        memory=memory,
        ray_remote_args=ray_remote_args,
        concurrency=concurrency,
        override_num_blocks=override_num_blocks,
    )


class SQLDatasink(Datasink):
    """Each write task runs ``sql`` (an INSERT with one parameter per column, in column order) with
    ``executemany`` over its blocks' rows, then commits."""

    def __init__(self, sql: str, connection_factory):
        _check_query(sql, connection_factory)
        self.sql, self.connection_factory = sql, connection_factory

    def get_name(self) -> str:
        return "SQL"

    def write(self, blocks, ctx):
        with _cursor(self.connection_factory) as (connection, cursor):
            for table in blocks:
                if table.num_rows:
                    cursor.executemany(self.sql, list(zip(*(column.to_pylist() for column in table.columns))))
            connection.commit()
