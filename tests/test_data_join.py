"""Dataset.join on the real runtime, against pandas.merge (Ray's semantics: null keys match nothing)."""

import math

import numpy as np
import pandas as pd
import pytest

import ember.data as rd


def _frames():
    rng = np.random.default_rng(11)
    # Repeated keys on both sides, keys only on one side, and a second key column.
    left = pd.DataFrame({"k": rng.integers(0, 30, 90), "g": rng.integers(0, 2, 90), "a": rng.normal(size=90)})
    right = pd.DataFrame({"key": rng.integers(10, 45, 60), "h": rng.integers(0, 2, 60), "b": rng.normal(size=60)})
    return left, right


def _rows(frame_or_rows, columns) -> list:
    """Rows as sorted tuples, NaN and None both as None (an outer join's missing side)."""
    records = frame_or_rows.to_dict("records") if isinstance(frame_or_rows, pd.DataFrame) else frame_or_rows

    def clean(value):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return float(value)

    return sorted((tuple(clean(r[c]) for c in columns) for r in records), key=repr)


@pytest.mark.parametrize(
    "join_type, how", [("inner", "inner"), ("left_outer", "left"), ("right_outer", "right"), ("full_outer", "outer")]
)
def test_inner_and_outer_joins_match_pandas(cluster, join_type, how):
    left, right = _frames()
    ds = rd.from_pandas([left.iloc[:40], left.iloc[40:]]).join(
        rd.from_pandas([right.iloc[:25], right.iloc[25:]]), join_type, 3, on=("k",), right_on=("key",)
    )
    got = ds.take_all()
    assert list(got[0]) == ["k", "g", "a", "h", "b"]  # the right key folds into the left one
    want = left.merge(right, how=how, left_on="k", right_on="key")
    want["k"] = want["k"].fillna(want["key"])  # pandas keeps both keys; Ray (and Ember) coalesce them
    assert _rows(got, ["k", "g", "a", "h", "b"]) == _rows(want, ["k", "g", "a", "h", "b"])
    assert ds.materialize().num_blocks() == 3  # one block per partition


@pytest.mark.parametrize("join_type", ["left_semi", "right_semi", "left_anti", "right_anti"])
def test_semi_and_anti_joins_keep_one_side(cluster, join_type):
    left, right = _frames()
    ds = rd.from_pandas(left).join(rd.from_pandas(right), join_type, 2, on=["k", "g"], right_on=["key", "h"])
    got = ds.take_all()
    mine, other, keys, other_keys = (
        (left, right, ["k", "g"], ["key", "h"])
        if join_type.startswith("left")
        else (right, left, ["key", "h"], ["k", "g"])
    )
    matched = mine.merge(
        other[other_keys].drop_duplicates(), left_on=keys, right_on=other_keys, how="left", indicator=True
    )
    keep = matched["_merge"] == "both" if join_type.endswith("semi") else matched["_merge"] == "left_only"
    assert _rows(got, list(mine.columns)) == _rows(mine[keep.values], list(mine.columns))


def test_suffixes_tensors_and_null_keys(cluster):
    left = rd.from_items([{"id": i, "v": float(i)} for i in range(6)] + [{"id": None, "v": -1.0}])
    right = rd.from_items([{"id": i, "v": 10.0 * i} for i in range(3, 9)] + [{"id": None, "v": -2.0}])
    with pytest.raises(ValueError, match="both sides have the columns \\['v'\\]"):
        left.join(right, "inner", 2).take_all()
    got = left.join(right, "full_outer", 2, left_suffix="_l", right_suffix="_r").take_all()
    assert set(got[0]) == {"id", "v_l", "v_r"}
    # Null keys match nothing: each stays, alone, in an outer join.
    assert sorted(((r["v_l"], r["v_r"]) for r in got if r["id"] is None), key=repr) == [(-1.0, None), (None, -2.0)]
    assert sorted(r["id"] for r in got if r["id"] is not None) == list(range(9))
    # Columns pyarrow's join cannot carry (a tensor) are taken by row number.
    images = rd.range_tensor(8, shape=(2, 3), override_num_blocks=4).map_batches(
        lambda batch: {"id": batch["data"][:, 0, 0], "image": batch["data"]}
    )
    joined = images.join(rd.range(4), "inner", 2).take_all()
    assert sorted(int(r["id"]) for r in joined) == [0, 1, 2, 3]
    assert all(r["image"].shape == (2, 3) and (r["image"] == r["id"]).all() for r in joined)


def test_a_join_with_an_empty_side(cluster):
    left = rd.range(10).filter(lambda row: row["id"] > 100)  # no rows, but blocks with a schema
    right = rd.range(5).map(lambda row: {"id": row["id"], "w": row["id"] * 2})
    assert left.join(right, "inner", 2).take_all() == []
    assert sorted(r["id"] for r in left.join(right, "right_outer", 2).take_all()) == [0, 1, 2, 3, 4]
    assert sorted(r["w"] for r in right.join(left, "left_anti", 3).take_all()) == [0, 2, 4, 6, 8]


def test_bad_join_arguments_fail_at_the_call(cluster):
    ds = rd.range(5)
    with pytest.raises(ValueError, match="join_type must be one of"):
        ds.join(ds, "cross", 2)
    with pytest.raises(ValueError, match="num_partitions must be a positive int"):
        ds.join(ds, "inner", 0)
    with pytest.raises(TypeError, match="ds must be a Dataset"):
        ds.join([1, 2], "inner", 2)
    with pytest.raises(ValueError, match="as many columns"):
        ds.join(ds, "inner", 2, on=("id",), right_on=("id", "x"))
    with pytest.raises(ValueError, match="right dataset has no column 'nope'"):
        ds.join(ds, "inner", 2, right_on=("nope",), validate_schemas=True)
    with pytest.raises(ValueError, match="no key column 'nope'"):
        ds.join(ds, "inner", 2, on=("nope",)).take_all()
