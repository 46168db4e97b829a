"""ember.data's sampling, block order, splits at row indices and sizes, on the shared cluster, checked
against numpy's np.split and the blocks themselves."""

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import ember
import ember.data as rd
from ember.data.all_to_all import piece_ranges, proportion_cuts


def ids(ds) -> list:
    return [row["id"] for row in ds.iter_rows()]


def blocks_of(ds) -> list:
    """Each block's ids, in block order (a materialized dataset's blocks, fetched for the check)."""
    return [ember.get(ref).column("id").to_pylist() for ref, _ in ds._plan.bundles]


def layout(sizes: list):
    """A materialized dataset of ids 0.. in blocks of exactly ``sizes`` rows (empty ones included)."""
    bounds = np.cumsum([0] + sizes)
    tables = [pa.table({"id": pa.array(range(lo, hi), pa.int64())}) for lo, hi in zip(bounds[:-1], bounds[1:])]
    ds = rd.from_arrow(tables)
    assert [m.num_rows for _, m in ds._plan.bundles] == sizes
    return ds


# ---- random_sample --------------------------------------------------------------------------------


def test_random_sample_size_order_and_seed(cluster):
    n, fraction = 10_000, 0.3
    ds = rd.range(n, override_num_blocks=8)
    kept = ids(ds.random_sample(fraction, seed=7))
    # Five standard deviations of Binomial(n, fraction) either side of its mean.
    bound = 5 * math.sqrt(n * fraction * (1 - fraction))
    assert abs(len(kept) - n * fraction) <= bound
    assert kept == sorted(set(kept)) and set(kept) <= set(range(n))  # a filter: rows keep their order
    assert kept == ids(ds.random_sample(fraction, seed=7))
    assert kept != ids(ds.random_sample(fraction, seed=8))
    # The same blocks give the same sample, read or already in the store, and a limit after it
    # takes the sample's first rows.
    assert kept == ids(ds.materialize().random_sample(fraction, seed=7))
    assert [r["id"] for r in ds.random_sample(fraction, seed=7).take(5)] == kept[:5]
    assert ids(ds.random_sample(0.0, seed=1)) == [] and ids(ds.random_sample(1, seed=1)) == list(range(n))
    unseeded = ids(ds.random_sample(0.5))
    assert abs(len(unseeded) - n / 2) <= 5 * math.sqrt(n / 4)


def test_random_sample_blocks_draw_independently(cluster):
    # Ten blocks of 500 rows: keyed by the block's place, each block keeps different offsets.
    ds = rd.range(5000, override_num_blocks=10).materialize()
    assert [m.num_rows for _, m in ds._plan.bundles] == [500] * 10
    sampled = ds.random_sample(0.5, seed=3).materialize()
    offsets = {tuple(i % 500 for i in block) for block in blocks_of(sampled)}
    assert len(offsets) == 10


def test_random_sample_errors(cluster):
    ds = rd.range(10)
    for fraction in (-0.1, 1.5, "0.5", None, True):
        with pytest.raises(ValueError, match="fraction"):
            ds.random_sample(fraction)
    for seed in (-1, 1.5, "7"):
        with pytest.raises(ValueError, match="seed"):
            ds.random_sample(0.5, seed=seed)
    with pytest.raises(ValueError, match="empty"):
        rd.from_items([]).random_sample(0.5)


# ---- randomize_block_order ------------------------------------------------------------------------


def test_randomize_block_order_moves_blocks_not_rows(cluster):
    ds = layout([7, 3, 0, 12, 5, 9, 1, 8, 6, 4])
    before = blocks_of(ds)
    orders = []
    for seed in range(4):
        out = ds.randomize_block_order(seed=seed).materialize()
        after = blocks_of(out)
        assert sorted(after) == sorted(before)  # the same blocks, each with its rows in their order
        assert {ref for ref, _ in out._plan.bundles} == {ref for ref, _ in ds._plan.bundles}  # no copy
        assert after == blocks_of(ds.randomize_block_order(seed=seed).materialize())
        orders.append(after)
    assert any(order != before for order in orders) and len({str(o) for o in orders}) > 1
    shuffled = ids(rd.range(200, override_num_blocks=10).randomize_block_order(seed=1))
    assert sorted(shuffled) == list(range(200)) and shuffled != list(range(200))
    with pytest.raises(ValueError, match="seed"):
        ds.randomize_block_order(seed=-2)


# ---- split_at_indices / split_proportionately -----------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 6), max_size=8),
    st.lists(st.integers(0, 50), min_size=1, max_size=6).map(sorted),
)
def test_piece_ranges_match_np_split(sizes, indices):
    """The cut decision alone: every piece's ranges, read off the blocks, are np.split's piece."""
    bounds = np.cumsum([0] + sizes)
    blocks = [list(range(lo, hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]
    pieces = piece_ranges(sizes, indices)
    want = [list(p) for p in np.split(np.arange(sum(sizes)), indices)]
    assert [[i for b, off, rows in piece for i in blocks[b][off : off + rows]] for piece in pieces] == want
    assert all(rows > 0 for piece in pieces for _, _, rows in piece)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 200), st.lists(st.floats(0.001, 0.5), min_size=1, max_size=5))
def test_proportion_cuts_leave_no_piece_empty(total, proportions):
    assume(sum(proportions) < 1)
    try:
        cuts = proportion_cuts(total, proportions)
    except ValueError:
        assert total < len(proportions) + 1 or min(proportions) * total < len(proportions)
        return
    sizes = np.diff([0] + cuts + [total])
    assert len(sizes) == len(proportions) + 1 and all(sizes > 0)
    # Each cut moves at most one row per later cut from where its proportion puts it.
    raw = [int(total * c) for c in np.cumsum(proportions)]
    assert all(0 <= r - c <= len(cuts) - 1 - i for i, (r, c) in enumerate(zip(raw, cuts)))


@pytest.mark.parametrize("sizes", [[3, 3, 4], [1] * 10, [10], [4, 0, 6], [0, 10, 0]])
def test_split_at_indices_matches_np_split(cluster, sizes):
    ds = layout(sizes)
    cases = [[2, 5], [3, 6], [0], [10], [4, 4], [0, 0, 10], [3, 3, 20], [15, 20], [1, 2, 3, 4, 5, 6, 7, 8, 9]]
    for indices in cases:
        pieces = ds.split_at_indices(indices)
        want = [list(p) for p in np.split(np.arange(10), indices)]
        assert [ids(p) for p in pieces] == want, (sizes, indices)
        assert [p.count() for p in pieces] == [len(w) for w in want]
        for piece in pieces:
            # Each piece's metadata describes its blocks exactly; an empty piece has none.
            for ref, meta in piece._plan.bundles:
                table = ember.get(ref)
                assert meta.num_rows == table.num_rows > 0 and meta.size_bytes == table.nbytes


def test_split_at_indices_shares_whole_blocks(cluster):
    ds = layout([3, 3, 4])
    refs = [ref for ref, _ in ds._plan.bundles]
    first, second, third = ds.split_at_indices([3, 6])
    assert [[r for r, _ in p._plan.bundles] for p in (first, second, third)] == [[refs[0]], [refs[1]], [refs[2]]]
    left, right = ds.split_at_indices([4])
    assert left._plan.bundles[0][0] == refs[0] and left._plan.bundles[1][0] not in refs  # only the cut block
    assert [r for r, _ in right._plan.bundles][1:] == [refs[2]]
    lazy = rd.range(30, override_num_blocks=3).map(lambda r: {"id": r["id"] * 2})
    assert [ids(p) for p in lazy.split_at_indices([5, 25])] == [
        list(range(0, 10, 2)),
        list(range(10, 50, 2)),
        list(range(50, 60, 2)),
    ]


def test_split_at_indices_errors(cluster):
    ds = layout([5, 5])
    with pytest.raises(ValueError, match="at least"):
        ds.split_at_indices([])
    with pytest.raises(ValueError, match="sorted"):
        ds.split_at_indices([4, 2])
    with pytest.raises(ValueError, match="non-negative"):
        ds.split_at_indices([-1, 3])
    with pytest.raises(TypeError):
        ds.split_at_indices([1.5])


def test_split_proportionately(cluster):
    ds = layout([4, 3, 3])
    cases = {
        (0.2, 0.5): [2, 5, 3],
        (0.5,): [5, 5],
        (0.33, 0.33, 0.33): [3, 3, 3, 1],
        # Cuts at 2, 5, 5: the last two meet, so that cut and every one before it move a row earlier.
        (0.25, 0.3, 0.01): [1, 3, 1, 5],
    }
    for proportions, sizes in cases.items():
        pieces = ds.split_proportionately(list(proportions))
        assert [p.count() for p in pieces] == sizes
        assert [i for p in pieces for i in ids(p)] == list(range(10))
    assert [p.count() for p in layout([20]).split_proportionately([0.5, 0.02, 0.02])] == [8, 1, 1, 10]
    for bad, message in (
        ([], "at least"),
        ([0.5, 0.5], "less than 1"),
        ([0.0, 0.2], "bigger than 0"),
        ([-0.1, 0.5], "bigger than 0"),
        ([0.01], "too few"),
        ([0.1, 0.1, 0.1, 0.05], "too few"),
    ):
        with pytest.raises(ValueError, match=message):
            ds.split_proportionately(bad)


# ---- sizes and files ------------------------------------------------------------------------------


def test_size_bytes_and_num_blocks(cluster):
    ds = rd.range(1000, override_num_blocks=4).map_batches(lambda b: {"id": b["id"], "x": b["id"] * 0.5})
    mat = ds.materialize()
    assert mat.size_bytes() == sum(ember.get(ref).nbytes for ref, _ in mat._plan.bundles) > 0
    assert ds.size_bytes() == mat.size_bytes()
    assert layout([0, 0]).size_bytes() == 0
    with pytest.raises(NotImplementedError):
        ds.num_blocks()
    assert mat.num_blocks() == 4


def test_input_files(cluster, tmp_path):
    root = tmp_path / "pq"
    root.mkdir()
    for i in range(3):
        pq.write_table(pa.table({"id": list(range(i * 5, i * 5 + 5))}), root / f"part{i}.parquet")
    (root / "_SUCCESS").write_text("")  # a hidden file is not an input
    want = [str(root / f"part{i}.parquet") for i in range(3)]
    ds = rd.read_parquet(str(root))
    assert ds.input_files() == want
    assert ds.filter(lambda r: r["id"] > 3).random_sample(0.5).input_files() == want
    assert rd.read_parquet(str(root), override_num_blocks=1).input_files() == want
    csv = tmp_path / "a.csv"
    csv.write_text("id\n100\n101\n")
    assert ds.union(rd.read_csv(str(csv))).input_files() == want + [str(csv)]
    assert ds.materialize().input_files() == [] and rd.range(5).input_files() == []
