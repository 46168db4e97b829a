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


def test_streaming_train_test_split_random_and_hash(cluster):
    import hashlib

    ds = rd.range(1000, override_num_blocks=8)
    train, test = ds.streaming_train_test_split(0.25, seed=3)
    train_ids, test_ids = [r["id"] for r in train.iter_rows()], [r["id"] for r in test.iter_rows()]
    assert sorted(train_ids + test_ids) == list(range(1000)) and not set(train_ids) & set(test_ids)
    assert 150 < len(test_ids) < 350  # about a quarter
    assert [r["id"] for r in ds.streaming_train_test_split(0.25, seed=3)[1].iter_rows()] == test_ids  # repeatable
    assert [r["id"] for r in ds.streaming_train_test_split(0.25, seed=4)[1].iter_rows()] != test_ids

    items = rd.from_items([{"key": f"user{i % 50}", "v": i} for i in range(400)], override_num_blocks=4)
    train, test = items.streaming_train_test_split(0.3, split_type="hash", hash_column="key")
    train_keys, test_keys = {r["key"] for r in train.iter_rows()}, {r["key"] for r in test.iter_rows()}
    assert not train_keys & test_keys and len(train_keys | test_keys) == 50  # a key stays on one side
    # The same keys as Ray's hash split: blake2b's first 8 bytes against (1 - test_size) * 2**64.
    ray_test = {
        f"user{i}"
        for i in range(50)
        if int.from_bytes(hashlib.blake2b(f"user{i}".encode(), digest_size=8).digest(), "big") >= 0.7 * (1 << 64)
    }
    assert test_keys == ray_test
    with pytest.raises(ValueError, match="hash_column"):
        ds.streaming_train_test_split(0.2, split_type="hash")
    with pytest.raises(ValueError, match="seed is not supported"):
        ds.streaming_train_test_split(0.2, split_type="hash", hash_column="id", seed=1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        ds.streaming_train_test_split(1.0)


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
