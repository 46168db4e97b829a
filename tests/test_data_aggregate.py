"""Dataset.aggregate, GroupedData.aggregate and ember.data.aggregate on the real runtime, against
pandas and numpy (the values Ray Data gives for the same calls)."""

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest

import ember.data as rd
from ember.data.aggregate import (
    AbsMax,
    AggregateFn,
    AggregateFnV2,
    Count,
    Max,
    Mean,
    Min,
    Quantile,
    Std,
    Sum,
    Unique,
)


@pytest.fixture
def frame():
    rng = np.random.default_rng(7)
    y = rng.normal(size=120)
    y[[3, 50, 51]] = np.nan  # nulls in three rows, two of them in group 2
    return pd.DataFrame({"k": np.arange(120) % 3, "x": rng.normal(size=120) * 10, "y": y})


def dataset(frame):
    # Four blocks, so that every group's partials come from several blocks and are merged.
    items = [{"k": int(r.k), "x": float(r.x), "y": None if np.isnan(r.y) else float(r.y)} for r in frame.itertuples()]
    return rd.from_items(items, override_num_blocks=4)


def test_dataset_level_aggregates_match_numpy(cluster, frame):
    ds = dataset(frame)
    assert ds.sum("x") == pytest.approx(frame.x.sum())
    assert ds.min("x") == frame.x.min() and ds.max("x") == frame.x.max()
    assert ds.mean("y") == pytest.approx(frame.y.mean())  # pandas skips NaN as Ember skips nulls
    assert ds.std("x") == pytest.approx(frame.x.std()) and ds.std("x", ddof=0) == pytest.approx(frame.x.std(ddof=0))
    both = ds.sum(["x", "y"])
    assert list(both) == ["sum(x)", "sum(y)"] and both["sum(y)"] == pytest.approx(frame.y.sum())
    assert set(ds.max()) == {"max(k)", "max(x)", "max(y)"}  # on=None: every column
    # A null is not ignored when asked: the answer is None, as Ray's.
    assert ds.sum("y", ignore_nulls=False) is None and ds.mean("y", ignore_nulls=False) is None
    assert isinstance(rd.range(10).sum("id"), int) and rd.range(10).sum("id") == 45


def test_aggregate_objects_names_and_values(cluster, frame):
    result = dataset(frame).aggregate(
        Count(),
        Count("y"),
        Count("y", ignore_nulls=True),
        Mean("x", alias_name="avg"),
        AbsMax("x"),
        Quantile("x", q=0.25),
        Unique("k"),
        Std("y"),
    )
    assert list(result) == [
        "count()",
        "count(y)",
        "count(y)_2",
        "avg",
        "abs_max(x)",
        "quantile(x)",
        "unique(k)",
        "std(y)",
    ]
    assert result["count()"] == 120 and result["count(y)"] == 120 and result["count(y)_2"] == 117
    assert result["avg"] == pytest.approx(frame.x.mean())
    assert result["abs_max(x)"] == frame.x.abs().max()
    assert result["quantile(x)"] == pytest.approx(np.quantile(frame.x, 0.25))
    assert result["unique(k)"] == [0, 1, 2]
    assert result["std(y)"] == pytest.approx(frame.y.std())


def test_groupby_aggregate_matches_pandas(cluster, frame):
    got = (
        dataset(frame)
        .groupby("k")
        .aggregate(Sum("x"), Min("y"), Max("y", ignore_nulls=False), Count(), Quantile("x"), Mean("y"))
        .to_pandas()
    )
    groups = frame.groupby("k")
    assert got["k"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(got["sum(x)"], groups.x.sum())
    np.testing.assert_allclose(got["min(y)"], groups.y.min())
    np.testing.assert_allclose(got["mean(y)"], groups.y.mean())
    np.testing.assert_allclose(got["quantile(x)"], groups.x.quantile(0.5))
    assert got["count()"].tolist() == groups.size().tolist()
    # Groups 0 and 2 hold a null: their max is None when nulls count; group 1's is its max.
    assert got["max(y)"].isna().tolist() == [True, False, True]
    assert got["max(y)"][1] == pytest.approx(groups.y.max()[1])


def test_groupby_shorthands_default_to_every_other_column(cluster, frame):
    got = dataset(frame).groupby("k").sum().to_pandas()
    assert list(got.columns) == ["k", "sum(x)", "sum(y)"]
    np.testing.assert_allclose(got["sum(y)"], frame.groupby("k").y.sum())
    nulls = dataset(frame).groupby("k").mean("y", ignore_nulls=False).to_pandas()
    assert nulls["mean(y)"].isna().tolist() == [True, False, True]


def test_a_legacy_aggregate_fn_by_rows_and_by_blocks(cluster):
    ds = rd.from_items([{"k": i % 2, "n": i} for i in range(1, 9)], override_num_blocks=3)
    product = AggregateFn(
        init=lambda key: 1, accumulate_row=lambda acc, row: acc * row["n"], merge=lambda a, b: a * b, name="prod"
    )
    assert ds.aggregate(product) == {"prod": 40320}
    assert ds.groupby("k").aggregate(product).take_all() == [{"k": 0, "prod": 2 * 4 * 6 * 8}, {"k": 1, "prod": 105}]
    seen_keys = AggregateFn(
        init=lambda key: [key],
        accumulate_block=lambda acc, block: acc + [block.num_rows],
        merge=lambda a, b: [a[0]] + a[1:] + b[1:],
        finalize=lambda acc: (acc[0], sum(acc[1:])),
        name="key_rows",
    )
    assert ds.aggregate(seen_keys) == {"key_rows": [None, 8]}
    assert [r["key_rows"] for r in ds.groupby("k").aggregate(seen_keys).take_all()] == [[0, 4], [1, 4]]


class SumOfSquares(AggregateFnV2):
    def __init__(self, on):
        super().__init__(f"sum_sq({on})", zero_factory=lambda: 0.0, on=on, ignore_nulls=True)

    def aggregate_block(self, block):
        values = block.column(self.get_target_column())
        return pc.sum(pc.multiply(values, values)).as_py() or 0.0

    def combine(self, current_accumulator, new):
        return current_accumulator + new

    def finalize(self, accumulator):
        return round(accumulator, 6)


def test_an_aggregate_fn_v2_subclass_and_a_subclassed_built_in(cluster, frame):
    ds = dataset(frame)
    assert ds.aggregate(SumOfSquares("x"))["sum_sq(x)"] == pytest.approx(round((frame.x**2).sum(), 6))

    class CountTwice(Count):  # a subclass takes the Python path with its own methods
        def finalize(self, accumulator):
            return accumulator * 2

    grouped = ds.groupby("k").aggregate(SumOfSquares("x"), CountTwice()).to_pandas()
    np.testing.assert_allclose(grouped["sum_sq(x)"], frame.groupby("k").x.apply(lambda v: (v**2).sum()))
    assert grouped["count()"].tolist() == [80, 80, 80]


def test_empty_datasets_and_multiple_keys(cluster, frame):
    empty = rd.range(10).filter(lambda row: False)
    assert empty.sum("id") is None
    none = {"count()": 0, "mean(id)": None, "quantile(id)": None}
    assert empty.aggregate(Count(), Mean("id"), Quantile("id")) == none
    assert empty.groupby("id").aggregate(Count()).take_all() == []
    ds = dataset(frame).add_column("even", lambda batch: batch["k"] % 2 == 0)
    got = ds.groupby(["k", "even"]).aggregate(Count(), Unique("k")).take_all()
    assert [(r["k"], r["even"], r["count()"], r["unique(k)"]) for r in got] == [
        (0, True, 40, [0]),
        (1, False, 40, [1]),
        (2, True, 40, [2]),
    ]


def test_bad_aggregations_fail_clearly(cluster, frame):
    ds = dataset(frame)
    with pytest.raises(ValueError, match="at least one"):
        ds.aggregate()
    with pytest.raises(TypeError, match="not an AggregateFn"):
        ds.groupby("k").aggregate("sum")
    with pytest.raises(ValueError, match="no column 'nope'.*'k', 'x', 'y'"):
        ds.sum("nope")
    with pytest.raises(ValueError, match="exactly one"):
        AggregateFn(init=lambda k: 0, merge=lambda a, b: a, name="bad")
    with pytest.raises(ValueError, match="q must be"):
        Quantile("x", q=1.5)
    with pytest.raises(TypeError, match="on must be a column name"):
        Sum(["x"])

    def broken(acc, row):
        raise KeyError("no such field")

    with pytest.raises(KeyError, match="no such field"):
        ds.aggregate(AggregateFn(init=lambda k: 0, accumulate_row=broken, merge=lambda a, b: a, name="broken"))


def test_dataset_unique_ignores_nulls_when_asked(cluster):
    ds = rd.from_items([{"v": 1}, {"v": None}, {"v": 1}, {"v": 2}])
    assert sorted(ds.unique("v"), key=lambda v: (v is None, v)) == [1, 2, None]
    assert sorted(ds.unique("v", ignore_nulls=True)) == [1, 2]


def test_std_keeps_the_spread_of_values_far_from_zero(cluster):
    # A sum of squares of 1e9 + noise has no digits left for the noise; merged moments do.
    values = 1e9 + np.random.default_rng(3).normal(size=400)
    ds = rd.from_items([{"k": i % 2, "v": float(v)} for i, v in enumerate(values)], override_num_blocks=4)
    assert ds.std("v") == pytest.approx(values.std(ddof=1), rel=1e-6)
    grouped = ds.groupby("k").std("v", ddof=0).to_pandas()["std(v)"].tolist()
    assert grouped == pytest.approx([values[0::2].std(), values[1::2].std()], rel=1e-6)

    class StdInPython(Std):  # the Python path merges the same summaries
        pass

    assert ds.aggregate(StdInPython("v"))["std(v)"] == pytest.approx(values.std(ddof=1), rel=1e-6)
