"""Custom sources and sinks (Datasource/ReadTask/read_datasource, Datasink/write_datasink) and ORC
files, on the shared cluster: every row checked exactly, callbacks counted on the driver."""

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import ember
import ember.data as rd
from ember.data import BlockMetadata, Datasink, Datasource, ReadTask, WriteResult
from ember.data.plan import optimize, physical_plan
from ember.exceptions import TaskError
from ember.util.scheduling_strategies import NodeAffinitySchedulingStrategy


class SourceError(Exception):
    pass


def _range_table(lo, hi):
    return pa.table({"id": np.arange(lo, hi, dtype=np.int64), "sq": np.arange(lo, hi, dtype=np.int64) ** 2})


class RangeDatasource(Datasource):
    """n rows, computed in the read tasks; marks each task it runs with a file under ``marks``."""

    def __init__(self, n, marks=None, fail_at=None):
        self.n, self.marks, self.fail_at = n, marks, fail_at
        self.asked = []

    def estimate_inmemory_data_size(self):
        return 16 * self.n

    def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
        self.asked.append(parallelism)
        bounds = [(self.n * i // parallelism, self.n * (i + 1) // parallelism) for i in range(parallelism)]
        return [self._task(i, lo, hi) for i, (lo, hi) in enumerate(bounds)]

    def _task(self, i, lo, hi):
        marks, fail_at = self.marks, self.fail_at

        def read_fn():
            if marks is not None:
                open(os.path.join(marks, str(i)), "w").close()
            if fail_at == i:
                raise SourceError(f"task {i} cannot read")
            return [_range_table(lo, hi)]

        meta = BlockMetadata(num_rows=hi - lo, size_bytes=16 * (hi - lo), input_files=None, exec_stats=None)
        return ReadTask(read_fn, meta, schema=_range_table(0, 0).schema)


class PiecesDatasource(Datasource):
    """Each task yields several blocks: pyarrow Tables and pandas DataFrames, rows unknown beforehand."""

    def estimate_inmemory_data_size(self):
        return None

    def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
        def read_fn(i):
            yield pa.table({"k": [i * 10, i * 10 + 1], "s": ["t", "t"]})
            yield pd.DataFrame({"k": [i * 10 + 2], "s": ["p"]})
            yield pa.table({"k": pa.array([], pa.int64()), "s": pa.array([], pa.string())})

        return [ReadTask(lambda i=i: read_fn(i), BlockMetadata(None, None)) for i in range(parallelism)]


def test_read_datasource_honours_parallelism_and_reads_every_row(cluster):
    source = RangeDatasource(1000)
    ds = rd.read_datasource(source, override_num_blocks=5)
    assert source.asked == [5]
    assert ds.count() == 1000  # from the tasks' metadata
    materialized = ds.materialize()
    assert materialized.num_blocks() == 5
    table = materialized.to_arrow()
    assert table.column("id").to_pylist() == list(range(1000))
    assert table.column("sq").to_pylist() == [i * i for i in range(1000)]
    assert ds.schema().names == ["id", "sq"]
    assert "ReadRange" in str(rd.read_datasource(RangeDatasource(3), override_num_blocks=1).materialize().stats())

    default = RangeDatasource(100)
    assert rd.read_datasource(default).count() == 100
    (asked,) = default.asked
    assert asked >= 1


def test_read_fn_yielding_several_tables_and_dataframes(cluster):
    ds = rd.read_datasource(PiecesDatasource(), override_num_blocks=3)
    rows = ds.take_all()
    assert sorted((r["k"], r["s"]) for r in rows) == sorted(
        (i * 10 + j, "p" if j == 2 else "t") for i in range(3) for j in range(3)
    )
    assert ds.materialize().num_blocks() == 3  # a task's blocks make one block
    doubled = ds.map_batches(lambda b: {"k": b["k"] * 2}).take_all()
    assert sorted(r["k"] for r in doubled) == sorted(2 * (i * 10 + j) for i in range(3) for j in range(3))


def test_limit_and_select_columns_on_a_custom_source(cluster, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    ds = rd.read_datasource(RangeDatasource(100, marks=str(marks)), override_num_blocks=10)
    assert [r["id"] for r in ds.limit(7).take_all()] == list(range(7))
    # The metadata says 10 rows per task: a limit of 7 needs only the first task.
    assert sorted(os.listdir(marks)) == ["0"]

    selected = ds.select_columns(["sq"]).limit(12).to_arrow()
    assert selected.column_names == ["sq"]
    assert selected.column("sq").to_pylist() == [i * i for i in range(12)]
    with pytest.raises(KeyError, match="nope"):
        ds.select_columns(["nope"]).take_all()


def test_per_task_row_limit_and_calling_a_read_task(cluster):
    task = ReadTask(
        lambda: [pa.table({"x": [1, 2, 3]}), pa.table({"x": [4, 5]})], BlockMetadata(5, 40), per_task_row_limit=4
    )
    assert [t.column("x").to_pylist() for t in task()] == [[1, 2, 3], [4]]
    assert task.metadata.num_rows == 5 and task.per_task_row_limit == 4

    class Capped(Datasource):
        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            return [task, task]

    assert rd.read_datasource(Capped()).to_arrow().column("x").to_pylist() == [1, 2, 3, 4] * 2


def test_errors_in_read_fn_surface_with_the_users_type(cluster):
    ds = rd.read_datasource(RangeDatasource(40, fail_at=2), override_num_blocks=4)
    with pytest.raises(SourceError, match="task 2 cannot read") as info:
        ds.take_all()
    assert isinstance(info.value, TaskError)

    class TableNotList(Datasource):
        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            return [ReadTask(lambda: pa.table({"x": [1]}), BlockMetadata(1, 8))]

    with pytest.raises(TypeError, match="iterable of blocks"):
        rd.read_datasource(TableNotList()).take_all()


def test_read_datasource_argument_errors(cluster):
    with pytest.raises(TypeError, match="expects a Datasource, got list"):
        rd.read_datasource([1, 2])
    with pytest.raises(ValueError, match="override_num_blocks must be a positive int"):
        rd.read_datasource(RangeDatasource(4), override_num_blocks=0)
    with pytest.raises(ValueError, match="concurrency"):
        rd.read_datasource(RangeDatasource(4), concurrency=0)

    class BadTasks(Datasource):
        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            return [lambda: []]

    with pytest.raises(TypeError, match="must return ReadTask objects, got function"):
        rd.read_datasource(BadTasks())
    with pytest.raises(TypeError, match="Nothing must implement get_read_tasks"):
        rd.read_datasource(type("Nothing", (Datasource,), {})())
    with pytest.raises(TypeError, match="read_fn must be callable"):
        ReadTask([pa.table({"x": [1]})], BlockMetadata(1, 8))
    with pytest.raises(TypeError, match="metadata must be a BlockMetadata"):
        ReadTask(lambda: [], {"num_rows": 1})


def test_empty_source_legacy_reader_and_local_reads(cluster):
    class Empty(Datasource):
        def estimate_inmemory_data_size(self):
            return 0

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            return []

    assert rd.read_datasource(Empty()).count() == 0
    assert rd.read_datasource(Empty()).take_all() == []

    class SomeShardsEmpty(Datasource):
        def __init__(self, schema):
            self.schema = schema

        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            def shard(i):
                return [_range_table(i, i + 2)] if i % 2 else []

            return [
                ReadTask(lambda i=i: shard(i), BlockMetadata(None, None), schema=self.schema)
                for i in range(parallelism)
            ]

    for schema in (None, _range_table(0, 0).schema):
        ds = rd.read_datasource(SomeShardsEmpty(schema), override_num_blocks=4)
        assert sorted(ds.select_columns(["sq"]).to_arrow().column("sq").to_pylist()) == [1, 4, 9, 16]
        assert ds.count() == 4

    class Legacy(Datasource):
        def create_reader(self, **read_args):
            return RangeDatasource(read_args["n"])

    with pytest.warns(DeprecationWarning, match="create_reader is deprecated"):
        ds = rd.read_datasource(Legacy(), override_num_blocks=2, n=6)
    assert sorted(r["id"] for r in ds.take_all()) == list(range(6))

    class Local(Datasource):
        supports_distributed_reads = False

        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            def where():
                return [pa.table({"node": [ember.get_runtime_context().get_node_id()]})]

            return [ReadTask(where, BlockMetadata(1, None, input_files=["local://a"])) for _ in range(parallelism)]

    ds = rd.read_datasource(Local(), override_num_blocks=3, ray_remote_args={"num_cpus": 0.5}, concurrency=2)
    physical = physical_plan(optimize(ds._plan))
    assert physical.concurrency == 2 and physical.remote_args["num_cpus"] == 0.5
    assert isinstance(physical.remote_args["scheduling_strategy"], NodeAffinitySchedulingStrategy)
    assert {r["node"] for r in ds.take_all()} == {ember.get_runtime_context().get_node_id()}
    assert ds.input_files() == ["local://a"]


def test_block_metadata_takes_rays_fields():
    meta = BlockMetadata(num_rows=3, size_bytes=24, input_files=["a", "b"], exec_stats=None)
    assert meta.input_files == ("a", "b") and meta.schema is None
    assert hash(meta) == hash(BlockMetadata(3, 24, None, ("a", "b")))
    positional = BlockMetadata(2, 16, pa.schema([("x", pa.int64())]))
    assert positional.schema.names == ["x"] and positional.input_files is None


# ---- Datasink -------------------------------------------------------------------------------------


class WriteError(Exception):
    pass


class JsonLinesDatasink(Datasink):
    """One JSON lines file per write task; the driver-side copy records the callbacks it gets."""

    def __init__(self, root, fail_at=None, min_rows=None):
        self.root, self.fail_at, self.min_rows = root, fail_at, min_rows
        self.calls = []

    @property
    def min_rows_per_write(self):
        return self.min_rows

    def on_write_start(self, schema=None):
        self.calls.append(("start", schema))

    def write(self, blocks, ctx):
        if ctx.task_idx == self.fail_at:
            raise WriteError(f"task {ctx.task_idx} cannot write")
        rows = [row for block in blocks for row in block.to_pylist()]
        path = os.path.join(self.root, f"{ctx.kwargs['write_uuid']}_{ctx.task_idx}.jsonl")
        with open(path, "w") as out:
            out.writelines(json.dumps(row) + "\n" for row in rows)
        return {"task": ctx.task_idx, "rows": len(rows), "op": ctx.op_name}

    def on_write_complete(self, write_result):
        self.calls.append(("complete", write_result))

    def on_write_failed(self, error):
        self.calls.append(("failed", error))


def _written(root):
    rows = []
    for name in os.listdir(root):
        with open(os.path.join(root, name)) as f:
            rows.extend(json.loads(line) for line in f)
    return rows


def test_datasink_writes_every_row_once_and_completes_once(cluster, tmp_path):
    sink = JsonLinesDatasink(str(tmp_path))
    rd.range(500, override_num_blocks=6).map(lambda r: {"id": r["id"], "half": r["id"] / 2}).write_datasink(sink)
    rows = _written(tmp_path)
    assert sorted(r["id"] for r in rows) == list(range(500))
    assert all(r["half"] == r["id"] / 2 for r in rows)
    assert [kind for kind, _ in sink.calls] == ["start", "complete"]
    result = sink.calls[1][1]
    assert isinstance(result, WriteResult)
    assert result.num_rows == 500 and result.size_bytes == 500 * 16
    assert [r["task"] for r in result.write_returns] == list(range(6))
    assert sum(r["rows"] for r in result.write_returns) == 500
    assert {r["op"] for r in result.write_returns} == {"Write"}
    assert len(os.listdir(tmp_path)) == 6


def test_datasink_start_gets_the_schema_and_empty_writes_complete(cluster, tmp_path):
    sink = JsonLinesDatasink(str(tmp_path))
    rd.range(10, override_num_blocks=2).write_datasink(sink, concurrency=1, ray_remote_args={"num_cpus": 0.5})
    assert sink.calls[0] == ("start", pa.schema([("id", pa.int64())]))
    assert sorted(r["id"] for r in _written(tmp_path)) == list(range(10))

    empty = JsonLinesDatasink(str(tmp_path))
    rd.range(10).filter(lambda r: False).limit(0).write_datasink(empty)
    assert [kind for kind, _ in empty.calls] == ["start", "complete"]
    assert empty.calls[1][1].num_rows == 0


def test_datasink_failure_calls_on_write_failed_and_raises_the_users_error(cluster, tmp_path):
    sink = JsonLinesDatasink(str(tmp_path), fail_at=1)
    with pytest.raises(WriteError, match="task 1 cannot write") as info:
        rd.range(40, override_num_blocks=4).write_datasink(sink)
    assert [kind for kind, _ in sink.calls] == ["start", "failed"]
    assert sink.calls[1][1] is info.value
    assert isinstance(info.value, TaskError)


def test_datasink_min_rows_per_write_groups_blocks(cluster, tmp_path):
    sink = JsonLinesDatasink(str(tmp_path), min_rows=25)
    rd.range(100, override_num_blocks=10).write_datasink(sink)
    result = sink.calls[-1][1]
    assert [r["rows"] for r in result.write_returns] == [30, 30, 30, 10]
    assert sorted(r["id"] for r in _written(tmp_path)) == list(range(100))


def test_datasink_argument_errors(cluster, tmp_path):
    with pytest.raises(TypeError, match="expects a Datasink, got str"):
        rd.range(3).write_datasink("nowhere")

    class BySize(JsonLinesDatasink):
        min_bytes_per_write = 1024

    with pytest.raises(NotImplementedError, match="min_bytes_per_write"):
        rd.range(3).write_datasink(BySize(str(tmp_path)))
    with pytest.raises(ValueError, match="min_rows_per_write must be a positive int"):
        rd.range(3).write_datasink(JsonLinesDatasink(str(tmp_path), min_rows=0))
    with pytest.raises(TypeError, match="ray_remote_args must be a dict"):
        rd.range(3).write_datasink(JsonLinesDatasink(str(tmp_path)), ray_remote_args=[1])
    assert os.listdir(tmp_path) == []


def test_datasink_names():
    class MyDatasink(Datasink):
        pass

    class _Hidden(Datasink):
        pass

    class PlainDatasource(Datasource):
        pass

    assert MyDatasink().get_name() == "My" and _Hidden().get_name() == "Hidden"
    assert PlainDatasource().get_name() == "Plain"
    from ember.data.datasource import Datasink as Sink  # where Ray's imports find them
    from ember.data.datasource import WriteResult as Result

    assert Sink is Datasink and Result is WriteResult
    assert WriteResult.combine(WriteResult(1, 8, ["a"]), WriteResult(2, 16, ["b"])) == WriteResult(3, 24, ["a", "b"])


# ---- ORC ------------------------------------------------------------------------------------------


def _orc_table():
    return pa.table(
        {
            "i": np.arange(60, dtype=np.int64),
            "f": np.linspace(0, 1, 60),
            "s": pa.array([f"row{i}" if i % 7 else None for i in range(60)], pa.string()),
            "b": [i % 3 == 0 for i in range(60)],
            "small": np.arange(60, dtype=np.int16),
            "day": pa.array(np.arange(60, dtype=np.int32) + 19723, pa.int32()).cast(pa.date32()),
        }
    )


def test_orc_round_trip_is_exact(cluster, tmp_path):
    source = _orc_table()
    rd.from_arrow(source).repartition(3).write_orc(str(tmp_path / "o"))
    files = sorted(os.listdir(tmp_path / "o"))
    assert len(files) == 3 and all(f.endswith(".orc") for f in files)
    back = rd.read_orc(str(tmp_path / "o")).to_arrow().sort_by("i")
    assert back.equals(source)

    only = rd.read_orc(str(tmp_path / "o")).select_columns(["s", "i"]).to_arrow().sort_by("i")
    assert only.column_names == ["s", "i"] and only.column("s").equals(source.column("s"))

    with_paths = rd.read_orc(str(tmp_path / "o"), include_paths=True).take_all()
    assert {r["path"].rsplit("/", 1)[-1] for r in with_paths} == set(files)


def test_orc_write_options_and_modes(cluster, tmp_path):
    out = str(tmp_path / "o")
    rd.range(100, override_num_blocks=10).write_orc(out, min_rows_per_file=40, compression="zlib")
    assert len(os.listdir(out)) == 3
    assert sorted(r["id"] for r in rd.read_orc(out).take_all()) == list(range(100))
    with pytest.raises(FileExistsError):
        rd.range(3).write_orc(out, mode="error")
    rd.range(5).write_orc(out, mode="overwrite")
    assert rd.read_orc(out).count() == 5
    with pytest.raises(TypeError, match="does not support Ray's arrow_orc_args_fn"):
        rd.range(3).write_orc(out, arrow_orc_args_fn=dict)
    with pytest.raises(FileNotFoundError):
        rd.read_orc(str(tmp_path / "missing"))
