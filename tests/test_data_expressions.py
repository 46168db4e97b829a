"""ember.data.expressions (col, lit, Expr operators and functions) and the Dataset methods that take
them: translation to pyarrow checked against numpy on small tables without a cluster, then
with_column / with_columns / filter(expr=...) on the shared cluster, Parquet filter pushdown included."""

import pickle
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

import ember.data as rd
from ember.data.expressions import Expr, col, lit, referenced_columns, to_expression
from ember.data.plan import read_tasks, with_columns

A = np.array([-7, 7, 4, -3, 0, 12, -12, 5], dtype=np.int64)
B = np.array([2, 2, 3, -2, 5, -5, 7, 1], dtype=np.int64)
X = np.array([1.5, -2.5, 2.4, 0.5, -0.49, 3.75, -1.0, 9.0])
TABLE = pa.table({"a": A, "b": B, "x": X})


def evaluate(expr: Expr, table: pa.Table = TABLE) -> np.ndarray:
    return pds.dataset(table).to_table(columns={"r": expr.to_pyarrow()})["r"].to_numpy(zero_copy_only=False)


# ---- translation, no cluster ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr, expected",
    [
        (col("a") + col("b"), A + B),
        (col("a") - 3, A - 3),
        (10 - col("a"), 10 - A),
        (col("a") * col("x"), A * X),
        (2 * col("b"), 2 * B),
        (col("a") / col("b"), A / B),
        (7 / col("b"), 7 / B),
        (col("a") // col("b"), A // B),
        (col("x") // 2, X // 2),
        (col("a") % col("b"), A % B),
        (col("x") % 1.5, X % 1.5),
        (100 % col("b"), 100 % B),
        (col("a") ** 2, A**2),
        (2 ** col("b").abs(), 2 ** np.abs(B)),
        (col("x").power(3), X**3),
        (-col("a"), -A),
        (col("a").negate(), -A),
        ((col("a") + 1) * (col("b") - 2) / 4, (A + 1) * (B - 2) / 4),
    ],
)
def test_arithmetic_matches_numpy(expr, expected):
    np.testing.assert_allclose(evaluate(expr), expected)


def test_comparisons_and_boolean_logic_match_numpy():
    cases = [
        (col("a") > col("b"), A > B),
        (col("a") >= 4, A >= 4),
        (col("x") < 0, X < 0),
        (col("x") <= 0.5, X <= 0.5),
        (col("a") == 7, A == 7),
        (col("a") != col("b"), A != B),
        ((col("a") > 0) & (col("x") > 0), (A > 0) & (X > 0)),
        ((col("a") > 0) | (col("x") > 2), (A > 0) | (X > 2)),
        (~(col("b") < 0), ~(B < 0)),
        (~((col("a") % 2 == 0) | (col("b") == 2)) & (col("x") != 0.5), ~((A % 2 == 0) | (B == 2)) & (X != 0.5)),
    ]
    for expr, expected in cases:
        assert evaluate(expr).tolist() == expected.tolist(), repr(expr)


@pytest.mark.parametrize(
    "method, reference",
    [
        ("abs", np.abs),
        ("sign", np.sign),
        ("ceil", np.ceil),
        ("floor", np.floor),
        ("round", np.round),  # both round half to even
        ("trunc", np.trunc),
        ("exp", np.exp),
        ("sin", np.sin),
        ("cos", np.cos),
        ("tan", np.tan),
        ("atan", np.arctan),
    ],
)
def test_elementwise_functions_match_numpy(method, reference):
    np.testing.assert_allclose(evaluate(getattr(col("x"), method)()), reference(X))


def test_functions_of_positive_and_integer_inputs():
    positive = np.abs(X) + 0.5
    table = pa.table({"p": positive, "a": A, "u": np.clip(X, -1, 1)})
    for method, reference in [("sqrt", np.sqrt), ("ln", np.log), ("log10", np.log10), ("log2", np.log2)]:
        np.testing.assert_allclose(evaluate(getattr(col("p"), method)(), table), reference(positive))
    np.testing.assert_allclose(evaluate(col("u").asin(), table), np.arcsin(np.clip(X, -1, 1)))
    np.testing.assert_allclose(evaluate(col("u").acos(), table), np.arccos(np.clip(X, -1, 1)))
    # An integer column gets a float result, as in numpy, where Arrow alone has no integer kernel.
    np.testing.assert_allclose(evaluate(col("a").exp(), table), np.exp(A))
    np.testing.assert_allclose(evaluate((col("a").abs() + 1).sqrt(), table), np.sqrt(np.abs(A) + 1))


def test_nulls_membership_and_kleene_logic():
    table = pa.table({"v": [1, None, 3, 4], "s": ["x", "y", None, "x"], "t": [True, None, False, None]})

    def values(expr):
        return pds.dataset(table).to_table(columns={"r": expr.to_pyarrow()})["r"].to_pylist()

    assert values(col("v").is_null()) == [False, True, False, False]
    assert values(col("s").is_not_null()) == [True, True, False, True]
    assert values(col("v").is_in([1, 4])) == [True, False, False, True]
    assert values(col("s").is_in(("x",))) == [True, False, False, True]
    assert values(col("v").not_in([3])) == [True, True, False, True]
    assert values(col("v") + 1) == [2, None, 4, 5]
    # Kleene logic: null & False is False, null | True is True, as Ray and SQL do.
    assert values(col("t") & lit(False)) == [False, False, False, False]
    assert values(col("t") | lit(True)) == [True, True, True, True]
    assert values(col("t") & lit(True)) == [True, None, False, None]


def test_cast_alias_and_structure():
    assert evaluate(col("x").cast(pa.int64(), safe=False)).tolist() == X.astype(np.int64).tolist()
    assert evaluate(col("a").cast("float32")).dtype == np.float32

    class RayLikeDataType:
        def to_arrow_dtype(self):
            return pa.string()

    assert evaluate(col("a").cast(RayLikeDataType())).tolist() == [str(v) for v in A]
    with pytest.raises(pa.ArrowInvalid):  # a safe cast refuses to drop the fraction
        evaluate(col("x").cast(pa.int64()))
    with pytest.raises(ValueError, match="unknown type name"):
        col("a").cast("no_such_type")
    with pytest.raises(TypeError, match="target_type"):
        col("a").cast(int)

    total = (col("a") * col("b")).alias("total")
    assert total.name == "total" and col("a").name == "a" and (col("a") + 1).name is None
    assert total.columns() == {"a", "b"} and lit(3).columns() == set()
    assert (col("a") + 1).structurally_equals(col("a") + 1)
    assert not (col("a") + 1).structurally_equals(col("a") + 2)
    assert not col("a").structurally_equals(lit("a"))
    assert repr((col("a") > 1) & col("b").is_in([1, 2])) == "((col('a') > lit(1)) & col('b').is_in([1, 2]))"
    a = col("a")
    assert len({a, a, col("a")}) == 2 and {a: 1}[a] == 1  # hashable (by identity) though == builds an Expr
    assert isinstance(col("a") == 1, Expr)
    tree = ((col("a") + 1).abs().cast("float32") > lit(2)).alias("q")
    assert pickle.loads(pickle.dumps(tree)).structurally_equals(tree)  # an Expr may go to a remote task


def test_misuse_fails_where_it_is_written():
    with pytest.raises(TypeError, match="truth value"):
        bool(col("a") > 1)
    with pytest.raises(TypeError, match="truth value"):
        (col("a") > 1) and (col("b") < 2)  # noqa: B015
    with pytest.raises(TypeError, match="column name"):
        col("")
    with pytest.raises(TypeError, match="column name"):
        col(3)
    with pytest.raises(TypeError, match="is_in"):
        col("a").is_in(5)
    with pytest.raises(TypeError, match="is_in"):
        col("a").is_in(col("b"))
    with pytest.raises(TypeError, match="lit"):
        lit(object())
    with pytest.raises(TypeError, match="alias"):
        col("a").alias("")


def test_string_form_and_other_predicates():
    assert to_expression("a > 1 and b in [1, 2]").equals((pc.field("a") > 1) & pc.field("b").isin([1, 2]))
    pyarrow_expr = pc.field("a") < 3
    assert to_expression(pyarrow_expr) is pyarrow_expr
    assert to_expression(col("a") < 3).equals(pc.field("a") < pc.scalar(3))
    assert referenced_columns("a > 1 and not (b == c)") == {"a", "b", "c"}
    assert referenced_columns((col("a") + col("x")).abs() > 1) == {"a", "x"}
    assert referenced_columns(pyarrow_expr) is None
    for bad in ("__import__('os').getpid()", "a.real > 1", "a in c", "a >"):
        with pytest.raises(ValueError, match="filter"):
            to_expression(bad)
    with pytest.raises(TypeError, match="Expr"):
        to_expression(lambda r: True)


def test_with_columns_stage_on_a_table():
    out = with_columns(TABLE, [("a", (col("a") * 10).to_pyarrow()), ("c", (col("a") + col("b")).to_pyarrow())])
    # "a" is replaced where it was; "c" reads the input "a", not the one replaced beside it.
    assert out.column_names == ["a", "b", "x", "c"]
    assert out["a"].to_pylist() == (A * 10).tolist() and out["c"].to_pylist() == (A + B).tolist()
    assert with_columns(TABLE, [("k", lit(1).to_pyarrow())])["k"].to_pylist() == [1] * len(A)
    with pytest.raises(KeyError, match="with_column.*no such column"):
        with_columns(TABLE, [("z", (col("nope") + 1).to_pyarrow())])
    with pytest.raises(TypeError, match="with_column.*cannot evaluate"):
        with_columns(pa.table({"s": ["p"]}), [("z", (col("s") + 1).to_pyarrow())])


# ---- on the cluster ------------------------------------------------------------------------------


@pytest.fixture
def df():
    rng = np.random.default_rng(7)
    return pd.DataFrame({"a": np.arange(90), "b": rng.normal(size=90), "c": [f"s{i % 5}" for i in range(90)]})


@pytest.fixture
def parquet_dir(tmp_path, df):
    root = tmp_path / "pq"
    root.mkdir()
    for i in range(3):
        part = pa.Table.from_pandas(df.iloc[i * 30 : (i + 1) * 30], preserve_index=False)
        pq.write_table(part, root / f"p{i}.parquet", row_group_size=10)
    return root


def test_with_column_over_blocks_fuses_with_its_neighbours(cluster):
    ds = rd.range(100, override_num_blocks=5)
    out = ds.with_column("half", col("id") / 2).with_column("id", col("id") * -1).filter(expr=col("half") >= 10)
    assert out._plan_lines()[0].startswith("ReadRange->WithColumn(half)->WithColumn(id)->Filter(")
    rows = out.take_all()
    assert rows == [{"id": -i, "half": i / 2} for i in range(20, 100)]
    assert out.columns() == ["id", "half"]
    assert out.materialize().num_blocks() == 5

    many = ds.with_columns({"sq": col("id") ** 2, "odd": col("id") % 2 == 1}, {"neg": -col("id")})
    batch = many.take_batch(100)
    np.testing.assert_array_equal(batch["sq"], np.arange(100) ** 2)
    np.testing.assert_array_equal(batch["odd"], np.arange(100) % 2 == 1)
    np.testing.assert_array_equal(batch["neg"], -np.arange(100))
    assert many.schema().names == ["id", "sq", "odd", "neg"]  # from metadata, nothing run
    assert ds.with_column("k", lit("const")).limit(3).take_all() == [{"id": i, "k": "const"} for i in range(3)]


def test_filter_expr_is_pushed_into_the_parquet_scan(cluster, parquet_dir, df):
    predicate = (col("a") % 3 == 0) & (col("c").not_in(["s1"]))
    ds = rd.read_parquet(parquet_dir).filter(expr=predicate)
    expected = df[(df.a % 3 == 0) & (df.c != "s1")].reset_index(drop=True)
    pd.testing.assert_frame_equal(ds.to_pandas(), expected)
    assert re.search(rf"Operator ReadParquet: \d+ tasks, \d+ blocks, {len(expected)} rows", ds.stats())
    # The filter moved into the read: no Filter operator is left, and each read task's own block
    # already holds only the matching rows.
    (line,) = ds._plan_lines()
    assert line.startswith("ReadParquet (filter=") and "Filter(" not in line
    physical = ds._physical()
    assert sum(task.read().num_rows for task in read_tasks(physical)) == len(expected)
    plain = rd.read_parquet(parquet_dir)._physical()
    assert sum(task.read().num_rows for task in read_tasks(plain)) == len(df)

    # With read_parquet's own filter, a selection after the filter and a string-form filter.
    both = rd.read_parquet(parquet_dir, filter=pds.field("b") > 0).filter(expr=col("a") >= 30).filter(expr="a < 70")
    selected = both.select_columns(["c"])
    (line,) = selected._plan_lines()
    assert line.startswith("ReadParquet->SelectColumns") and "(columns=['c'], filter=" in line
    assert selected.to_pandas()["c"].tolist() == df[(df.b > 0) & (df.a >= 30) & (df.a < 70)].c.tolist()

    # Not pushed: a filter on a column the read does not read must fail as after the read.
    narrow = rd.read_parquet(parquet_dir, columns=["a"])
    with pytest.raises(ValueError, match="no column"):
        narrow.filter(expr=col("b") > 0)
    kept = narrow.filter(expr=col("a") < 5)
    assert "filter=" in kept._plan_lines()[0] and kept.count() == 5


def test_string_and_pyarrow_filters_unchanged(cluster, df):
    ds = rd.from_pandas([df.iloc[:40], df.iloc[40:]])
    by_expr = ds.filter(expr=(col("a") * 2 >= 30) & (col("b") > -0.5) & col("c").not_in(["s1", "s3"]))
    by_string = ds.filter(expr="a * 2 >= 30 and b > -0.5 and c not in ['s1', 's3']")
    by_pyarrow = ds.filter(expr=(pc.field("a") * 2 >= 30) & (pc.field("b") > -0.5) & ~pc.field("c").isin(["s1", "s3"]))
    expected = df[(df.a * 2 >= 30) & (df.b > -0.5) & ~df.c.isin(["s1", "s3"])].reset_index(drop=True)
    for got in (by_expr, by_string, by_pyarrow):
        pd.testing.assert_frame_equal(got.to_pandas(), expected)


def test_expression_errors(cluster, parquet_dir):
    ds = rd.read_parquet(parquet_dir)
    # Not an expression: at the call, schema or not.
    with pytest.raises(TypeError, match="with_column: the expression for 'z' must be an"):
        ds.with_column("z", "a + 1")
    with pytest.raises(TypeError, match="column_name"):
        ds.with_column(3, col("a"))
    with pytest.raises(TypeError, match="mapping"):
        ds.with_columns([col("a")])
    with pytest.raises(TypeError, match="filter: expr must be"):
        ds.filter(expr=42)
    with pytest.raises(TypeError, match="cols must be column names"):
        ds.select_columns([col("a")])
    with pytest.raises(ValueError, match="ActorPoolStrategy"):
        ds.with_column("z", col("a"), compute=rd.ActorPoolStrategy(size=1))
    # The read's schema is known from metadata: an unknown column or a type error fails at the call.
    with pytest.raises(ValueError, match=r"with_column.*no column\(s\) \['nope'\]"):
        ds.with_column("z", col("nope") + 1)
    with pytest.raises(TypeError, match="with_column.*cannot evaluate"):
        ds.with_column("z", col("c") + 1)
    with pytest.raises(ValueError, match=r"filter.*no column\(s\) \['nope'\]"):
        ds.filter(expr=col("nope") > 1)
    with pytest.raises(TypeError, match="filter.*cannot evaluate"):
        ds.filter(expr=col("a") + 1)  # not a predicate
    # After a map the schema is unknown until it runs: the task error names the operator.
    mapped = rd.range(20, override_num_blocks=2).map(lambda r: {"id": r["id"], "s": str(r["id"])})
    with pytest.raises(KeyError, match="no such column") as info:
        mapped.with_column("z", col("nope") * 2).take_all()
    assert "WithColumn(z)" in str(info.value)
    with pytest.raises(TypeError, match="cannot evaluate") as info:
        mapped.filter(expr=col("s") > 3).take_all()
    assert "Filter(" in str(info.value)
