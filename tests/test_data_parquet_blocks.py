"""How read_parquet cuts files into blocks: by the in-memory bytes of the columns read, and larger
when no user function runs in the read's tasks; the rows are the same whichever way they are cut."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import ember.data as rd
from ember.data import parquet
from ember.data.plan import optimize, physical_plan, read_tasks

GROUPS_PER_FILE = 16
GROUP_ROWS = 1000


@pytest.fixture
def many_groups(tmp_path, monkeypatch):
    """Two files of 16 row groups, each group 1000 rows x (three int64 columns + a dictionary-
    encoded one): 32 KB in memory per group and column. The block sizes shrink with them."""
    root = tmp_path / "groups"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        n = GROUPS_PER_FILE * GROUP_ROWS
        table = pa.table(
            {
                "id": np.arange(i * n, (i + 1) * n, dtype=np.int64),
                "key": rng.integers(0, 4, n, dtype=np.int64),  # Parquet stores it as a small dictionary
                "x": rng.standard_normal(n),
                "y": rng.random(n),
            }
        )
        pq.write_table(table, root / f"part-{i}.parquet", row_group_size=GROUP_ROWS)
    group = GROUP_ROWS * 8
    monkeypatch.setattr(parquet, "PARQUET_BLOCK_BYTES", 2 * group * 4)  # 2 groups of all four columns
    monkeypatch.setattr(parquet, "PARQUET_LIGHT_BLOCK_BYTES", 100 * group * 4)
    return root


def _blocks(ds) -> list:
    """Row counts of the blocks the first operator's read tasks will make."""
    op = physical_plan(optimize(ds._plan))
    while op.read is None:
        op = op.inputs[0]
    return [task.num_rows for task in read_tasks(op)]


def test_column_bytes_count_arrow_widths_not_parquet_encodings(many_groups):
    meta = pq.ParquetFile(many_groups / "part-0.parquet").metadata
    sizes = parquet._column_bytes(meta.schema.to_arrow_schema(), meta.row_group(0))
    # "key" is dictionary-encoded in the file (a few hundred bytes) but 8 bytes a row in Arrow.
    assert sizes == {"id": 8000, "key": 8000, "x": 8000, "y": 8000}
    assert meta.row_group(0).column(1).total_uncompressed_size < 8000


def test_user_function_keeps_small_blocks_plain_read_makes_large_ones(cluster, many_groups):
    ds = rd.read_parquet(many_groups)
    mapped = ds.map_batches(lambda b: b)
    # A user function: blocks of 2 groups.
    assert _blocks(mapped) == [2000] * 16
    # A plain read: as large as still gives at least _min_blocks (8) blocks: 4 groups of 32 KB.
    assert _blocks(ds) == [4000] * 8
    # Reading one column of four: a group of it is a quarter the bytes, so a block holds four
    # times the groups (the plain read's larger size is bounded by _min_blocks here).
    assert _blocks(ds.select_columns(["x"]).map_batches(lambda b: b)) == [8000] * 4
    assert _blocks(ds.select_columns(["x"])) == [8000] * 4
    # A groupby's partial aggregation runs no user function either.
    partial = physical_plan(optimize(ds.groupby("key").count()._plan)).inputs[0]
    assert [t.num_rows for t in read_tasks(partial)] == [4000] * 8
    # override_num_blocks is what the user asked for: never replanned larger.
    assert len(_blocks(rd.read_parquet(many_groups, override_num_blocks=3))) == 3


def test_rows_are_the_same_however_the_blocks_are_cut(cluster, many_groups):
    expected = pq.read_table(many_groups).sort_by("id")
    plain = rd.read_parquet(many_groups)
    for ds in (plain, plain.map_batches(lambda b: b, batch_format="pyarrow"), plain.limit(7777)):
        got = pa.concat_tables(ds.iter_batches(batch_size=None, batch_format="pyarrow")).sort_by("id")
        n = got.num_rows
        assert got.equals(expected.slice(0, n)) and n in (expected.num_rows, 7777)
    counted = plain.groupby("key").count().take_all()
    keys, counts = np.unique(expected.column("key").to_numpy(), return_counts=True)
    assert [(r["key"], r["count()"]) for r in counted] == list(zip(keys.tolist(), counts.tolist()))


def test_memory_mapped_read_gives_blocks_that_own_their_memory(cluster, tmp_path):
    """Local files are memory-mapped for the read: the blocks are identical to pyarrow's own read
    (nulls, dictionaries, strings, lists, an empty file) and do not change when the file does."""
    root = tmp_path / "mapped"
    root.mkdir()
    n = 5000
    table = pa.table(
        {
            "i": pa.array([None if k % 7 == 0 else k for k in range(n)], pa.int64()),
            "s": pa.array([f"v{k % 13}" if k % 5 else None for k in range(n)]).dictionary_encode(),
            "t": [f"text-{k}" for k in range(n)],
            "l": [[k, k + 1] if k % 3 else [] for k in range(n)],
            "f": np.linspace(0, 1, n),
        }
    )
    pq.write_table(table, root / "a.parquet", row_group_size=1000, compression="none", use_dictionary=["s"])
    pq.write_table(table.slice(0, 0), root / "b.parquet")
    expected = pq.read_table(root, use_threads=False)
    ds = rd.read_parquet(root).materialize()
    got = pa.concat_tables(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    assert got.equals(expected)
    # Overwrite the file in place (same inode, so a block still backed by a mapping would change).
    path = root / "a.parquet"
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.write(b"\0" * size)
    again = pa.concat_tables(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    assert again.equals(expected)
