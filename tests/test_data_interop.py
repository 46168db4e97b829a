"""ember.data's interop with core ObjectRefs (to_*_refs / from_*_refs), torch datasets (from_torch) and
.npy files (write_numpy), on the shared cluster, each round trip checked for exact contents."""

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import ember
import ember.data as rd
from ember.exceptions import TaskError


@pytest.fixture
def df():
    return pd.DataFrame({"a": np.arange(30), "b": np.arange(30) * 0.5, "c": [f"s{i % 4}" for i in range(30)]})


def _frame(i):
    return pd.DataFrame({"x": np.arange(i * 5, i * 5 + 5), "s": [f"r{i}"] * 5})


def _array(i):
    return np.arange(i * 6, i * 6 + 6, dtype=np.int32).reshape(3, 2)


def _table(i):
    return pa.table({"k": pa.array([i, i + 1], pa.int16()), "v": ["a", "b"]})


# ---- to_*_refs --------------------------------------------------------------------------------------


def test_to_pandas_refs_one_frame_per_block(cluster, df):
    ds = rd.from_pandas(df).repartition(3)
    refs = ds.to_pandas_refs()
    assert len(refs) == 3 and all(isinstance(r, ember.ObjectRef) for r in refs)
    frames = ember.get(refs)
    assert all(isinstance(f, pd.DataFrame) for f in frames)
    pd.testing.assert_frame_equal(pd.concat(frames, ignore_index=True), df)


def test_to_numpy_refs_dicts_and_one_column(cluster):
    ds = rd.range(10, override_num_blocks=3).map_batches(lambda b: {"id": b["id"], "sq": b["id"] ** 2})
    batches = ember.get(ds.to_numpy_refs())
    assert [sorted(b) for b in batches] == [["id", "sq"]] * 3
    np.testing.assert_array_equal(np.concatenate([b["sq"] for b in batches]), np.arange(10) ** 2)
    columns = ember.get(ds.to_numpy_refs(column="id"))
    assert len(columns) == 3 and all(isinstance(c, np.ndarray) for c in columns)
    np.testing.assert_array_equal(np.concatenate(columns), np.arange(10))
    tensors = ember.get(rd.range_tensor(4, shape=(2, 3), override_num_blocks=2).to_numpy_refs(column="data"))
    assert [t.shape for t in tensors] == [(2, 2, 3), (2, 2, 3)]
    np.testing.assert_array_equal(tensors[1][1], np.full((2, 3), 3))
    with pytest.raises(ValueError, match="no column 'nope'"):
        ds.to_numpy_refs(column="nope")
    with pytest.raises(TypeError, match="column must be a str"):
        ds.to_numpy_refs(column=3)


def test_to_arrow_refs_round_trip_keeps_the_blocks(cluster, df):
    refs = rd.from_pandas(df).repartition(2).to_arrow_refs()
    back = rd.from_arrow_refs(refs)
    assert isinstance(back, rd.MaterializedDataset) and back.num_blocks() == 2
    # The blocks are the objects themselves: same refs, no copy.
    assert [ref for ref, _ in back._plan.bundles] == refs
    pd.testing.assert_frame_equal(back.to_pandas(), df)
    assert back.count() == 30 and back.columns() == ["a", "b", "c"]


def test_pandas_round_trip(cluster, df):
    refs = rd.from_pandas(df).repartition(3).to_pandas_refs()
    back = rd.from_pandas_refs(refs)
    assert back.num_blocks() == 3 and back.count() == 30
    pd.testing.assert_frame_equal(back.to_pandas(), df)


def test_numpy_round_trip(cluster):
    ds = rd.range_tensor(6, shape=(2,), override_num_blocks=3)
    back = rd.from_numpy_refs(ds.to_numpy_refs(column="data"))
    assert back.num_blocks() == 3
    assert [r["data"].tolist() for r in back.take_all()] == [[i, i] for i in range(6)]
    # A dict of arrays per ref gives a block with those columns.
    both = rd.from_numpy_refs(rd.range(5, override_num_blocks=2).to_numpy_refs())
    assert both.take_all() == [{"id": i} for i in range(5)]


# ---- from_*_refs over refs made by ember.put and by tasks ----------------------------------------------


def test_from_refs_made_by_put(cluster):
    ds = rd.from_pandas_refs([ember.put(_frame(i)) for i in range(3)])
    assert ds.take_all() == [{"x": i * 5 + j, "s": f"r{i}"} for i in range(3) for j in range(5)]
    one = rd.from_pandas_refs(ember.put(_frame(7)))  # a single ref, not a list
    assert one.num_blocks() == 1 and one.count() == 5

    arrays = rd.from_numpy_refs([ember.put(_array(i)) for i in range(2)])
    assert arrays.schema().names == ["data"] and arrays.count() == 6
    np.testing.assert_array_equal(np.stack([r["data"] for r in arrays.take_all()]), np.arange(12).reshape(6, 2))
    flat = rd.from_numpy_refs(ember.put(np.arange(4.0)))
    assert flat.take_all() == [{"data": float(i)} for i in range(4)]
    cols = rd.from_numpy_refs(ember.put({"p": np.arange(3), "q": np.array(["u", "v", "w"])}))
    assert cols.take_all() == [{"p": 0, "q": "u"}, {"p": 1, "q": "v"}, {"p": 2, "q": "w"}]

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, _table(5).schema) as writer:
        writer.write_table(_table(5))
    ipc = rd.from_arrow_refs(ember.put(sink.getvalue().to_pybytes()))  # Arrow IPC bytes, as Ray takes
    assert ipc.to_arrow().equals(_table(5))

    tables = rd.from_arrow_refs([ember.put(_table(i)) for i in range(2)])
    assert tables.schema().types[0] == pa.int16()
    assert tables.take_all() == [{"k": 0, "v": "a"}, {"k": 1, "v": "b"}, {"k": 1, "v": "a"}, {"k": 2, "v": "b"}]


def test_from_refs_made_by_tasks(cluster):
    frames = [ember.remote(_frame).remote(i) for i in range(3)]
    arrays = [ember.remote(_array).remote(i) for i in range(3)]
    tables = [ember.remote(_table).remote(i) for i in range(3)]
    pd.testing.assert_frame_equal(
        rd.from_pandas_refs(frames).to_pandas(), pd.concat([_frame(i) for i in range(3)], ignore_index=True)
    )
    got = np.stack([r["data"] for r in rd.from_numpy_refs(arrays).iter_rows()])
    np.testing.assert_array_equal(got, np.concatenate([_array(i) for i in range(3)]))
    assert rd.from_arrow_refs(tables).to_arrow().equals(pa.concat_tables([_table(i) for i in range(3)]))
    # The datasets are ordinary ones: transforms run over them.
    assert rd.from_pandas_refs(frames).filter(expr="x >= 12").count() == 3


def test_from_refs_empty_list(cluster):
    for make in (rd.from_pandas_refs, rd.from_arrow_refs, rd.from_numpy_refs):
        ds = make([])
        assert ds.count() == 0 and ds.take_all() == []


@pytest.mark.parametrize("make", [rd.from_pandas_refs, rd.from_arrow_refs, rd.from_numpy_refs])
def test_from_refs_refuse_what_is_not_a_ref(cluster, make):
    with pytest.raises(TypeError, match="expects an ObjectRef or a list of ObjectRefs, got DataFrame"):
        make(_frame(0))
    with pytest.raises(TypeError, match="got a list holding a int"):
        make([ember.put(_frame(0)), 3])


@pytest.mark.parametrize(
    "make, wanted",
    [
        (rd.from_pandas_refs, "not a pandas.DataFrame"),
        (rd.from_arrow_refs, "not a pyarrow.Table or the bytes of an Arrow IPC stream"),
        (rd.from_numpy_refs, "not a numpy.ndarray or a dict of numpy.ndarrays"),
    ],
)
def test_from_refs_name_the_wrong_object_type(cluster, make, wanted):
    good = {rd.from_pandas_refs: _frame(0), rd.from_arrow_refs: _table(0), rd.from_numpy_refs: _array(0)}[make]
    with pytest.raises(TypeError, match=f"object 1 is a list, {wanted}") as info:
        make([ember.put(good), ember.put([1, 2])])
    assert isinstance(info.value, TaskError)  # raised by the conversion task, reaching the caller


def test_from_numpy_refs_refuses_a_scalar_array(cluster):
    with pytest.raises(ValueError, match="0-d array"):
        rd.from_numpy_refs(ember.put(np.array(5)))


# ---- from_torch -----------------------------------------------------------------------------------


def _torch_datasets():
    import torch

    class Squares(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return torch.tensor([i, i * i])

    class Counter(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter({"n": n, "even": n % 2 == 0} for n in range(4))

    return Squares(), Counter()


def test_from_torch_map_style(cluster):
    squares, _ = _torch_datasets()
    ds = rd.from_torch(squares)
    assert ds.count() == 5  # from the dataset's len, before any read
    rows = ds.take_all()
    assert [sorted(r) for r in rows] == [["item"]] * 5
    np.testing.assert_array_equal(np.stack([r["item"] for r in rows]), [[i, i * i] for i in range(5)])
    assert ds.limit(2).count() == 2
    local = rd.from_torch(squares, local_read=True)
    np.testing.assert_array_equal(np.stack([r["item"] for r in local.take_all()]), [[i, i * i] for i in range(5)])


def test_from_torch_iterable(cluster):
    _, counter = _torch_datasets()
    ds = rd.from_torch(counter)
    assert ds.take_all() == [{"item": {"n": n, "even": n % 2 == 0}} for n in range(4)]
    assert rd.from_torch(counter).map(lambda r: {"n": r["item"]["n"] * 10}).take_all() == [
        {"n": n * 10} for n in range(4)
    ]


def test_from_torch_tuple_samples_come_back_as_tuples(cluster):
    import torch

    class Labelled(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.full((2,), i), f"label{i}"

    ds = rd.from_torch(Labelled())
    rows = ds.take_all()
    assert [r["item"][1] for r in rows] == [f"label{i}" for i in range(4)]
    assert all(isinstance(r["item"][0], torch.Tensor) for r in rows)
    assert [r["item"][0].tolist() for r in rows] == [[i, i] for i in range(4)]
    # Every batch format hands the samples over as the objects, and a batch given back keeps them.
    split = ds.map(lambda r: {"x": r["item"][0].numpy(), "y": r["item"][1]}).take_all()
    assert [r["y"] for r in split] == [f"label{i}" for i in range(4)]
    np.testing.assert_array_equal(np.stack([r["x"] for r in split]), [[i, i] for i in range(4)])
    for fmt in ("numpy", "pandas"):
        again = ds.map_batches(lambda b: b, batch_format=fmt).take_all()
        assert [r["item"][1] for r in again] == [f"label{i}" for i in range(4)]
    assert list(ds.to_pandas()["item"].map(lambda t: t[1])) == [f"label{i}" for i in range(4)]
    items = ember.get(ds.to_numpy_refs(column="item"))[0]
    assert items.dtype == object and items[2][1] == "label2"


def test_object_columns_read_from_a_file_stay_bytes(cluster, tmp_path):
    # Unpickling is code execution: a data file's contents are never unpickled on read.
    rd.from_items([(1, "a"), (2, "b")]).write_parquet(str(tmp_path / "o"))
    assert all(isinstance(r["item"], bytes) for r in rd.read_parquet(str(tmp_path / "o")).take_all())


def test_from_torch_refuses_other_objects():
    with pytest.raises(TypeError, match="expects a torch.utils.data.Dataset, got list"):
        rd.from_torch([1, 2, 3])


# ---- write_numpy ----------------------------------------------------------------------------------


def test_write_numpy_read_numpy_round_trip(cluster, tmp_path):
    ds = rd.range_tensor(10, shape=(2, 3), override_num_blocks=3)
    ds.write_numpy(str(tmp_path / "t"), column="data")
    names = sorted(os.listdir(tmp_path / "t"))
    assert len(names) == 3 and all(n.endswith(".npy") for n in names)
    back = rd.read_numpy(str(tmp_path / "t"))
    expected = np.broadcast_to(np.arange(10).reshape(10, 1, 1), (10, 2, 3))
    np.testing.assert_array_equal(np.stack([r["data"] for r in back.take_all()]), expected)

    plain = rd.range(7, override_num_blocks=2).map_batches(lambda b: {"id": b["id"], "f": b["id"] / 4})
    plain.write_numpy(str(tmp_path / "f"), column="f")
    assert sorted(r["data"] for r in rd.read_numpy(str(tmp_path / "f")).take_all()) == [i / 4 for i in range(7)]
    first = np.load(tmp_path / "f" / sorted(os.listdir(tmp_path / "f"))[0])
    assert first.dtype == np.float64 and first.ndim == 1


def test_write_numpy_files_and_modes(cluster, tmp_path):
    out = str(tmp_path / "m")
    ds = rd.range(12, override_num_blocks=4)
    ds.write_numpy(out, column="id", min_rows_per_file=6)
    assert len(os.listdir(out)) == 2
    ds.write_numpy(out, column="id", mode="ignore")
    assert len(os.listdir(out)) == 2
    with pytest.raises(FileExistsError):
        ds.write_numpy(out, column="id", mode="error")
    ds.write_numpy(out, column="id", mode="overwrite", concurrency=1, ray_remote_args={"num_cpus": 0.5})
    assert len(os.listdir(out)) == 4
    assert sorted(r["data"] for r in rd.read_numpy(out).take_all()) == list(range(12))
    ds.write_numpy(out, column="id")  # append: a second set of files beside the first
    assert len(os.listdir(out)) == 8
    with pytest.warns(DeprecationWarning, match="num_rows_per_file"):
        ds.write_numpy(str(tmp_path / "old"), column="id", num_rows_per_file=12)
    assert len(os.listdir(tmp_path / "old")) == 1


def test_write_numpy_option_errors(cluster, tmp_path):
    ds = rd.range(4)
    out = str(tmp_path / "e")
    with pytest.raises(ValueError, match="no column 'nope' in \\['id'\\]"):
        ds.write_numpy(out, column="nope")
    with pytest.raises(TypeError, match="column must be a str"):
        ds.write_numpy(out, column=None)
    with pytest.raises(TypeError, match="does not support Ray's filename_provider"):
        ds.write_numpy(out, column="id", filename_provider=object())
    with pytest.raises(TypeError, match="does not support Ray's arrow_open_stream_args"):
        ds.write_numpy(out, column="id", arrow_open_stream_args={})
    with pytest.raises(ValueError, match="min_rows_per_file must be a positive int"):
        ds.write_numpy(out, column="id", min_rows_per_file=0)
    with pytest.raises(ValueError, match="mode must be a SaveMode"):
        ds.write_numpy(out, column="id", mode="sometimes")
    with pytest.raises(TypeError, match="ray_remote_args must be a dict"):
        ds.write_numpy(out, column="id", ray_remote_args=1)
    assert not os.path.exists(out)  # every refusal comes before the directory is made
    # A column the plan cannot name before it runs fails in the write task, naming the columns.
    mapped = ds.map(lambda r: {"y": r["id"]})
    with pytest.raises(ValueError, match="no column 'id' in \\['y'\\]"):
        mapped.write_numpy(out, column="id")
    # Strings would need pickling, which read_numpy refuses: they are not written that way.
    with pytest.raises(ValueError, match="allow_pickle"):
        rd.from_items(["a", "b"]).write_numpy(str(tmp_path / "s"), column="item")


def test_write_numpy_try_create_dir(cluster, tmp_path):
    missing = str(tmp_path / "absent" / "deeper")
    with pytest.raises(FileNotFoundError, match="absent/deeper"):
        rd.range(3).write_numpy(missing, column="id", try_create_dir=False)
    made = str(tmp_path / "made")
    rd.range(3).write_numpy(made, column="id", try_create_dir=True)
    assert len(os.listdir(made)) >= 1


def test_try_create_dir_is_a_write_option_of_every_format(cluster, tmp_path):
    # Ray's option, taken by the write rather than handed on to pyarrow's or pandas' writer.
    rd.range(3).write_parquet(str(tmp_path / "p"), try_create_dir=True)
    assert rd.read_parquet(str(tmp_path / "p")).count() == 3
    with pytest.raises(FileNotFoundError):
        rd.range(3).write_csv(str(tmp_path / "no" / "c"), try_create_dir=False)
