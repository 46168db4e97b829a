"""ember.data's sources, transforms and consumers on the shared cluster, checked against pandas/pyarrow
results computed locally."""

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import ember.data as rd


@pytest.fixture
def df():
    rng = np.random.default_rng(0)
    return pd.DataFrame({"a": np.arange(60), "b": rng.normal(size=60), "c": [f"s{i % 7}" for i in range(60)]})


@pytest.fixture
def parquet_dir(tmp_path, df):
    root = tmp_path / "pq"
    root.mkdir()
    for i in range(3):
        pq.write_table(
            pa.Table.from_pandas(df.iloc[i * 20 : (i + 1) * 20], preserve_index=False), root / f"p{i}.parquet"
        )
    (root / "_SUCCESS").write_text("")
    return root


def test_range_and_tensor(cluster):
    assert rd.range(10).take_all() == [{"id": i} for i in range(10)]
    assert rd.range(1000, override_num_blocks=7).count() == 1000
    assert rd.range(0).take_all() == []
    batch = rd.range_tensor(6, shape=(2, 3)).take_batch(6)
    np.testing.assert_array_equal(batch["data"], np.arange(6)[:, None, None] * np.ones((6, 2, 3), dtype=np.int64))
    rows = rd.range_tensor(3, shape=(2,)).take_all()
    assert [r["data"].tolist() for r in rows] == [[0, 0], [1, 1], [2, 2]]


def test_in_memory_sources(cluster, df):
    assert rd.from_items([1, "x", None]).take_all() == [{"item": 1}, {"item": "x"}, {"item": None}]
    items = [{"k": i, "v": str(i)} for i in range(25)]
    assert rd.from_items(items, override_num_blocks=4).take_all() == items
    assert rd.from_items(items, override_num_blocks=4).materialize().num_blocks() == 4
    pd.testing.assert_frame_equal(rd.from_pandas([df.iloc[:30], df.iloc[30:]]).to_pandas(), df)
    arr = np.arange(24).reshape(6, 4)
    np.testing.assert_array_equal(rd.from_numpy(arr).take_batch(10)["data"], arr)
    np.testing.assert_array_equal(rd.from_numpy(np.arange(5)).take_batch()["data"], np.arange(5))
    table = pa.Table.from_pandas(df, preserve_index=False)
    assert rd.from_arrow([table.slice(0, 10), table.slice(10)]).to_arrow().equals(table)
    mixed = rd.from_blocks([table.slice(0, 10), df.iloc[10:]])  # Ray's from_blocks: a block each, as given
    assert mixed.num_blocks() == 2 and mixed.to_arrow().equals(table)
    with pytest.raises(TypeError, match="from_blocks"):
        rd.from_blocks([{"a": 1}])


def test_read_parquet_with_pushdown(cluster, parquet_dir, df):
    ds = rd.read_parquet(str(parquet_dir))
    assert ds.count() == 60 and ds.columns() == ["a", "b", "c"]
    pd.testing.assert_frame_equal(ds.to_pandas(), df)
    only = rd.read_parquet(parquet_dir, columns=["c", "a"])
    assert only.to_pandas().equals(df[["c", "a"]])
    filtered = rd.read_parquet(parquet_dir, filter=pds.field("a") >= 45).to_pandas()
    pd.testing.assert_frame_equal(filtered, df[df.a >= 45].reset_index(drop=True))
    # select_columns right after a read is pushed into the scan
    plan = rd.read_parquet(parquet_dir).select_columns(["b"])._plan_lines()
    assert "columns=['b']" in plan[0]
    assert rd.read_parquet(str(parquet_dir / "*.parquet")).count() == 60
    files = [str(parquet_dir / "p0.parquet"), str(parquet_dir / "p2.parquet")]
    assert rd.read_parquet(files).to_pandas()["a"].tolist() == list(range(20)) + list(range(40, 60))
    fs = pafs.SubTreeFileSystem(str(parquet_dir), pafs.LocalFileSystem())
    assert rd.read_parquet("p1.parquet", filesystem=fs).to_pandas()["a"].tolist() == list(range(20, 40))
    assert rd.read_parquet(parquet_dir, override_num_blocks=1).materialize().num_blocks() == 1


def test_read_errors_at_the_call(cluster, tmp_path, parquet_dir):
    with pytest.raises(FileNotFoundError, match="nope"):
        rd.read_parquet(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError):
        rd.read_csv(str(tmp_path / "*.csv"))
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a readable Parquet"):
        rd.read_parquet(str(tmp_path / "x.csv"))
    pq.write_table(pa.table({"a": ["x"]}), parquet_dir / "p9.parquet")
    with pytest.raises(ValueError, match="mismatched schemas"):
        rd.read_parquet(parquet_dir)
    with pytest.raises(ValueError, match="batch_format"):
        rd.range(3).map_batches(lambda b: b, batch_format="arrow")
    with pytest.raises(TypeError, match="fn must be"):
        rd.range(3).map(42)
    with pytest.raises(ValueError, match="concurrency"):
        rd.range(3).map_batches(type("C", (), {"__call__": lambda self, b: b}))
    with pytest.raises(ValueError, match="Invalid option"):
        rd.range(3).map_batches(lambda b: b, not_an_option=1)


def test_text_formats(cluster, tmp_path, df):
    (tmp_path / "csv").mkdir()
    df.iloc[:30].to_csv(tmp_path / "csv" / "a.csv", index=False)
    df.iloc[30:].to_csv(tmp_path / "csv" / "b.csv", index=False)
    pd.testing.assert_frame_equal(rd.read_csv(str(tmp_path / "csv")).to_pandas(), df)
    with_paths = rd.read_csv(str(tmp_path / "csv" / "a.csv"), include_paths=True).take(1)[0]
    assert with_paths["path"].endswith("a.csv")
    lines = tmp_path / "rows.jsonl"
    lines.write_text("".join(json.dumps({"x": i, "y": [i, i]}) + "\n" for i in range(5)))
    assert rd.read_json(str(lines)).take_all() == [{"x": i, "y": [i, i]} for i in range(5)]
    (tmp_path / "t.txt").write_text("one\ntwo\n\nthree\n")
    assert rd.read_text(str(tmp_path / "t.txt")).take_all() == [{"text": t} for t in ("one", "two", "three")]
    np.save(tmp_path / "m.npy", np.arange(12).reshape(4, 3))
    np.testing.assert_array_equal(
        rd.read_numpy(str(tmp_path / "m.npy")).take_batch()["data"], np.arange(12).reshape(4, 3)
    )
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "1.bin").write_bytes(b"\x00\x01")
    (tmp_path / "bin" / "2.bin").write_bytes(b"xyz")
    rows = rd.read_binary_files(str(tmp_path / "bin"), include_paths=True).take_all()
    assert [(r["bytes"], os.path.basename(r["path"])) for r in rows] == [(b"\x00\x01", "1.bin"), (b"xyz", "2.bin")]


def test_transforms_match_pandas(cluster, df):
    ds = rd.from_pandas([df.iloc[:25], df.iloc[25:]])
    out = (
        ds.map(lambda r: {**r, "d": r["a"] * 2})
        .flat_map(lambda r: [r, {**r, "a": -r["a"]}])
        .filter(lambda r: r["a"] % 3 == 0)
        .to_pandas()
    )
    expected = df.assign(d=df.a * 2)
    expected = pd.concat([expected, expected.assign(a=-expected.a)]).sort_index(kind="stable")
    expected = expected[expected.a % 3 == 0][["a", "b", "c", "d"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(out, expected)

    def numpy_fn(batch, k, *, offset):
        return {"a": batch["a"] * k + offset, "n": np.full(len(batch["a"]), len(batch["a"]))}

    got = ds.map_batches(numpy_fn, batch_size=7, fn_args=(3,), fn_kwargs={"offset": 1}).to_pandas()
    assert got["a"].tolist() == (df.a * 3 + 1).tolist()
    assert sorted(set(got["n"])) == [4, 7]  # 25 = 3*7+4, 35 = 5*7
    pandas_out = ds.map_batches(lambda b: b.assign(e=b.b.round(2)), batch_format="pandas").to_pandas()
    pd.testing.assert_frame_equal(pandas_out, df.assign(e=df.b.round(2)))
    arrow_out = ds.map_batches(lambda t: t.select(["c"]), batch_format="pyarrow").to_arrow()
    assert arrow_out.column("c").to_pylist() == df.c.tolist()

    def split(batch):
        yield {"a": batch["a"][:1]}
        yield {"a": batch["a"][1:]}

    assert ds.map_batches(split).to_pandas()["a"].tolist() == df.a.tolist()
    added = ds.add_column("s", lambda p: p["a"] + p["b"]).to_pandas()
    np.testing.assert_allclose(added["s"], df.a + df.b)
    assert ds.drop_columns(["b"]).columns() == ["a", "c"]
    assert ds.select_columns(["c", "a"]).to_pandas().equals(df[["c", "a"]])
    assert ds.rename_columns({"a": "x"}).columns() == ["x", "b", "c"]
    assert ds.rename_columns(["p", "q", "r"]).columns() == ["p", "q", "r"]
    assert ds.limit(33).to_pandas().equals(df.iloc[:33])
    assert rd.range(3).union(rd.range(2), rd.from_items([{"id": 9}])).take_all() == [
        {"id": i} for i in (0, 1, 2, 0, 1, 9)
    ]
    zipped = rd.range(10, override_num_blocks=3).zip(
        rd.range(10, override_num_blocks=4).map(lambda r: {"id": -r["id"]})
    )
    assert zipped.take_all() == [{"id": i, "id_1": -i} for i in range(10)]
    with pytest.raises(ValueError, match="equal row counts"):
        rd.range(3).zip(rd.range(4)).take_all()


def test_callable_class_on_actor_pool(cluster):
    class Scale:
        def __init__(self, k):
            self.k = k
            self.pid = os.getpid()

        def __call__(self, batch):
            return {"id": batch["id"] * self.k, "pid": np.full(len(batch["id"]), self.pid)}

    ds = rd.range(40, override_num_blocks=8).map_batches(Scale, fn_constructor_args=(5,), concurrency=2)
    out = ds.to_pandas()
    assert out["id"].tolist() == [i * 5 for i in range(40)]
    assert out["pid"].nunique() <= 2
    stats = ds._last_stats.op("MapBatches(Scale)")
    assert stats.actors_started == 2 and stats.max_actors == 2


def test_consumers(cluster, tmp_path, df):
    ds = rd.from_pandas(df).map_batches(lambda b: b, batch_size=None)
    assert ds.take(2) == df.iloc[:2].to_dict("records")
    assert ds.take_batch(3, batch_format="pandas").equals(df.iloc[:3])
    assert list(ds.take_batch(3)["a"]) == [0, 1, 2]
    assert [r["a"] for r in ds.iter_rows()] == df.a.tolist()
    sizes = [len(b["id"]) for b in rd.range(100, override_num_blocks=7).iter_batches(batch_size=16)]
    assert sizes == [16] * 6 + [4]
    dropped = [len(b["id"]) for b in rd.range(100).iter_batches(batch_size=16, drop_last=True)]
    assert dropped == [16] * 6
    shuffled = [
        b["id"] for b in rd.range(100).iter_batches(batch_size=10, local_shuffle_buffer_size=30, local_shuffle_seed=1)
    ]
    flat = np.concatenate(shuffled)
    assert sorted(flat.tolist()) == list(range(100)) and flat.tolist() != list(range(100))
    frames = list(rd.range(10).iter_batches(batch_size=5, batch_format="pandas"))
    assert all(isinstance(f, pd.DataFrame) for f in frames)
    assert isinstance(next(iter(rd.range(10).iter_batches(batch_format="pyarrow"))), pa.Table)
    refs = rd.range(10, override_num_blocks=2).to_arrow_refs()
    import ember

    assert sum(ember.get(r).num_rows for r in refs) == 10
    mat = ds.materialize()
    assert mat.count() == 60 and isinstance(mat, rd.MaterializedDataset)
    assert "<table" in mat._repr_html_() and "MapBatches" in ds._repr_html_()
    schema = ds.schema()
    assert isinstance(schema, rd.Schema) and schema.names == ["a", "b", "c"]
    assert repr(rd.range(3).schema()) == "Column  Type\n------  ----\nid      int64"
    assert rd.range(3).schema() == rd.range(5).schema() and rd.range(3).schema().types == [pa.int64()]
    assert "tasks" in ds.stats()
    rd.range(3).show()

    ds.write_parquet(str(tmp_path / "out_pq"))
    pd.testing.assert_frame_equal(rd.read_parquet(str(tmp_path / "out_pq")).to_pandas(), df)
    rd.from_pandas(df).write_csv(str(tmp_path / "out_csv"))
    pd.testing.assert_frame_equal(pd.concat(pd.read_csv(p) for p in sorted((tmp_path / "out_csv").iterdir())), df)
    rd.from_pandas(df).write_json(str(tmp_path / "out_json"))
    back = rd.read_json(str(tmp_path / "out_json")).to_pandas()
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    # mode: what a write does when its directory exists (Ray's SaveMode).
    out = tmp_path / "modes"
    rd.from_pandas(df).write_parquet(str(out))
    first = sorted(out.iterdir())
    rd.from_pandas(df).write_parquet(str(out), mode="ignore")
    assert sorted(out.iterdir()) == first
    with pytest.raises(FileExistsError):
        rd.from_pandas(df).write_parquet(str(out), mode=rd.SaveMode.ERROR)
    rd.from_pandas(df).write_parquet(str(out))  # append, the default: new files beside the old
    assert len(list(out.iterdir())) == 2 * len(first)
    rd.from_pandas(df).write_csv(str(out), mode="overwrite")
    assert len(list(out.iterdir())) == len(first) and all(p.suffix == ".csv" for p in out.iterdir())
    with pytest.raises(ValueError, match="mode"):
        rd.from_pandas(df).write_parquet(str(out), mode="upsert")
    # Ray's own write options that ember.data lacks are refused at the call, before anything is written.
    with pytest.raises(TypeError, match="partition_cols"):
        ds.write_csv(str(tmp_path / "refused"), partition_cols=["a"])  # write_parquet's alone, as in Ray
    with pytest.raises(ValueError, match="min_rows_per_file"):
        ds.write_parquet(str(tmp_path / "refused"), min_rows_per_file=0)
    assert not (tmp_path / "refused").exists()


def test_rays_read_arguments_are_taken_and_others_refused(cluster, parquet_dir, df, tmp_path):
    with_paths = rd.read_parquet(str(parquet_dir), include_paths=True)
    assert with_paths.columns() == ["a", "b", "c", "path"]
    rows = with_paths.filter(expr="a >= 15").select_columns(["path", "a"]).take_all()
    assert sorted((r["path"].rsplit("/", 1)[-1], r["a"]) for r in rows) == [
        (f"p{a // 20}.parquet", a) for a in range(15, 60)
    ]
    shuffled = rd.read_parquet(str(parquet_dir), shuffle="files", ray_remote_args={"num_cpus": 0.5}, concurrency=1)
    assert sorted(r["a"] for r in shuffled.take_all()) == list(range(60))
    missing = str(tmp_path / "nope.parquet")
    assert rd.read_parquet([str(parquet_dir), missing], ignore_missing_paths=True).count() == 60
    with pytest.raises(FileNotFoundError):
        rd.read_parquet([str(parquet_dir), missing])
    with pytest.warns(DeprecationWarning, match="parallelism"):
        assert rd.read_parquet(str(parquet_dir), parallelism=1).materialize().num_blocks() == 1
    df.to_csv(tmp_path / "t.csv", index=False)
    assert rd.read_csv(str(tmp_path / "t.csv"), num_cpus=0.5, shuffle="files").count() == 60

    # Arguments Ray hands on to pyarrow, or none at all, are refused at the call, never ignored.
    with pytest.raises(TypeError, match="does not take dataset_kwargs"):
        rd.read_parquet(str(parquet_dir), dataset_kwargs={})
    with pytest.raises(TypeError, match=r"read_csv\(\) does not take delimiter .*convert_options"):
        rd.read_csv(str(tmp_path / "t.csv"), delimiter=";")
    with pytest.raises(TypeError, match="does not take encoding"):
        rd.read_binary_files(str(tmp_path / "t.csv"), encoding="utf-8")
    with pytest.raises(ValueError, match="shuffle"):
        rd.read_text(str(tmp_path / "t.csv"), shuffle="rows")
    with pytest.raises(ValueError):
        rd.read_parquet(str(parquet_dir), ray_remote_args={"num_cpus": -1})


def test_dataset_passes_to_a_task(cluster):
    import ember

    @ember.remote
    def total(ds):
        return sum(r["id"] for r in ds.iter_rows())

    assert ember.get(total.remote(rd.range(50).map(lambda r: {"id": r["id"] + 1}))) == sum(range(1, 51))
    assert ember.get(total.remote(rd.from_items([{"id": 4}, {"id": 5}]))) == 9


def test_import_ember_does_not_load_pyarrow():
    import subprocess
    import sys

    code = "import sys, ember; assert 'pyarrow' not in sys.modules and 'pandas' not in sys.modules, 'loaded'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.getcwd(), env={**os.environ})


def test_pushdown_expressions_compute(cluster, parquet_dir, df):
    expr = (pc.field("b") > 0) & (pc.field("c") == "s1")
    got = rd.read_parquet(parquet_dir, columns=["a"], filter=expr).to_pandas()
    assert got["a"].tolist() == df[(df.b > 0) & (df.c == "s1")].a.tolist()


def test_filter_expr_runs_in_arrow_and_matches_pandas(cluster, df):
    ds = rd.from_pandas([df.iloc[:25], df.iloc[25:]])
    got = ds.filter(expr="a * 2 >= 30 and b > -0.5 and c not in ['s1', 's3']").to_pandas()
    expected = df[(df.a * 2 >= 30) & (df.b > -0.5) & ~df.c.isin(["s1", "s3"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected)
    assert ds.filter(expr=pc.field("a") < 3).count() == 3
    assert ds.filter(expr="10 < a <= 12").take_all() == [r for r in ds.take_all() if 10 < r["a"] <= 12]
    # Nothing in the string is run as Python: anything but a predicate fails at the call.
    for bad in ("__import__('os').getpid()", "a.real > 1", "a in c", "a >"):
        with pytest.raises(ValueError, match="filter"):
            ds.filter(expr=bad)
    with pytest.raises(ValueError, match="either fn or expr"):
        ds.filter(lambda r: True, expr="a > 1")
