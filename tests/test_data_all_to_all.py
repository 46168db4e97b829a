"""ember.data's all-to-all operations (map/reduce over block refs) against pandas."""

import numpy as np
import pandas as pd
import pytest

import ember.data as rd


@pytest.fixture
def df():
    rng = np.random.default_rng(1)
    return pd.DataFrame({"k": rng.integers(0, 4, 80), "g": rng.choice(["x", "y"], 80), "v": rng.normal(size=80)})


def test_repartition_and_shuffle(cluster):
    ds = rd.range(100, override_num_blocks=7)
    parts = ds.repartition(3).materialize()
    assert parts.num_blocks() == 3 and [r["id"] for r in parts.iter_rows()] == list(range(100))
    assert [m.num_rows for _, m in parts._plan.bundles] == [33, 33, 34]
    shuffled = [r["id"] for r in ds.random_shuffle(seed=5).take_all()]
    assert sorted(shuffled) == list(range(100)) and shuffled != list(range(100))
    assert shuffled == [r["id"] for r in ds.random_shuffle(seed=5).take_all()]
    assert sorted(r["id"] for r in ds.repartition(4, shuffle=True).take_all()) == list(range(100))


def test_sort(cluster, df):
    ds = rd.from_pandas([df.iloc[:30], df.iloc[30:]])
    assert ds.sort("v").to_pandas()["v"].tolist() == sorted(df.v)
    assert ds.sort("v", descending=True).to_pandas()["v"].tolist() == sorted(df.v, reverse=True)
    assert [r["id"] for r in rd.range(50).map(lambda r: {"id": (r["id"] * 7) % 50}).sort("id").take(4)] == [0, 1, 2, 3]


def test_groupby_aggregations_match_pandas(cluster, df):
    ds = rd.from_pandas([df.iloc[:25], df.iloc[25:60], df.iloc[60:]])
    expected = df.groupby("k").v
    got = ds.groupby("k").count().to_pandas()
    assert got["k"].tolist() == sorted(df.k.unique()) and got["count()"].tolist() == expected.count().tolist()
    np.testing.assert_allclose(ds.groupby("k").sum("v").to_pandas()["sum(v)"], expected.sum())
    np.testing.assert_allclose(ds.groupby("k").min("v").to_pandas()["min(v)"], expected.min())
    np.testing.assert_allclose(ds.groupby("k").max("v").to_pandas()["max(v)"], expected.max())
    np.testing.assert_allclose(ds.groupby("k").mean("v").to_pandas()["mean(v)"], expected.mean())
    np.testing.assert_allclose(ds.groupby("k").std("v").to_pandas()["std(v)"], expected.std())
    two = ds.groupby(["k", "g"]).count().to_pandas()
    pandas_two = df.groupby(["k", "g"]).size().reset_index(name="count()")
    pd.testing.assert_frame_equal(two, pandas_two, check_dtype=False)

    def summarize(batch):
        return {"k": batch["k"][:1], "n": [len(batch["k"])], "total": [batch["v"].sum()]}

    groups = ds.groupby("k").map_groups(summarize).sort("k").to_pandas()
    assert groups["n"].tolist() == expected.count().tolist()
    np.testing.assert_allclose(groups["total"], expected.sum())
    assert sorted(ds.unique("g")) == ["x", "y"]


def test_split_and_train_test_split(cluster):
    ds = rd.range(100, override_num_blocks=10)
    parts = ds.split(3)
    assert sorted(r["id"] for p in parts for r in p.iter_rows()) == list(range(100))
    equal = ds.split(3, equal=True)
    assert [p.count() for p in equal] == [33, 33, 33]
    train, test = ds.train_test_split(0.25)
    assert [r["id"] for r in train.iter_rows()] == list(range(75))
    assert [r["id"] for r in test.iter_rows()] == list(range(75, 100))
    train, test = ds.train_test_split(10, shuffle=True, seed=0)
    ids = [r["id"] for r in train.iter_rows()] + [r["id"] for r in test.iter_rows()]
    assert test.count() == 10 and sorted(ids) == list(range(100)) and ids != list(range(100))
    with pytest.raises(ValueError):
        ds.train_test_split(1.5)


def test_groupby_mean_and_std_of_several_columns_skip_nulls(cluster):
    items = [{"g": 1, "a": 1.0, "b": 2.0}, {"g": 1, "a": 3.0, "b": None}, {"g": 2, "a": 5.0, "b": 4.0}]
    frame = pd.DataFrame(items)
    means = rd.from_items(items).groupby("g").mean(["a", "b"]).to_pandas()
    want = frame.groupby("g")[["a", "b"]].mean().reset_index()
    assert means["mean(a)"].tolist() == want["a"].tolist() and means["mean(b)"].tolist() == want["b"].tolist()
    stds = rd.from_items(items).groupby("g").std(["a", "b"]).to_pandas()
    assert stds["std(a)"].tolist()[0] == pytest.approx(frame[frame.g == 1]["a"].std())


def test_the_key_hash_is_vectorised_stable_across_types_and_spreads_rows():
    import pyarrow as pa

    from ember.data.all_to_all import key_hash

    ints = pa.table({"k": pa.array([5, None, 7], type=pa.int32()), "s": ["a", None, "b"]})
    floats = pa.table({"k": pa.array([5.0, None, 7.0]), "s": pa.array(["a", None, "b"], type=pa.large_string())})
    assert key_hash(ints, ["k", "s"]).tolist() == key_hash(floats, ["k", "s"]).tolist()
    many = pa.table({"k": pa.array(np.arange(10_000) * 1024)})  # multiples of 1024: low bits all zero
    counts = np.bincount((key_hash(many, ["k"]) % np.uint64(4)).astype(np.int64), minlength=4)
    assert counts.min() > 2_000, counts
