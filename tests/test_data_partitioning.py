"""Partitioned Parquet on the shared cluster: write_parquet(partition_cols=, max_rows_per_file=) and
read_parquet's partitioning (Hive by default, "dir", typed fields, filters that skip files)."""

import glob
import os

import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

import ember.data as rd
from ember.data.datasource import Partitioning
from ember.data.expressions import col

ROWS = [{"k": i % 3, "s": None if i % 5 == 0 else f"s/{i % 2}", "v": float(i)} for i in range(30)]


def _files(root) -> list:
    return sorted(glob.glob(os.path.join(root, "**", "*.parquet"), recursive=True))


def test_partition_cols_write_hive_directories_that_read_back(cluster, tmp_path):
    out = str(tmp_path / "hive")
    rd.from_items(ROWS, override_num_blocks=3).write_parquet(out, partition_cols=["k", "s"])
    assert sorted(os.listdir(out)) == ["k=0", "k=1", "k=2"]
    # A null goes to Hive's default partition; a "/" in a value is escaped, not a directory.
    assert sorted(os.listdir(os.path.join(out, "k=0"))) == ["s=__HIVE_DEFAULT_PARTITION__", "s=s%2F0", "s=s%2F1"]
    for path in _files(out):
        assert pq.read_schema(path).names == ["v"]  # the values live in the directory names only

    back = rd.read_parquet(out)
    assert back.columns() == ["v", "k", "s"]
    assert back.count() == len(ROWS)  # from the files' metadata
    got = sorted((r["v"], r["k"], r["s"]) for r in back.take_all())
    # Strings, as Ray reads them, unless field_types say otherwise; Hive's null comes back as None.
    assert got == sorted((r["v"], str(r["k"]), r["s"]) for r in ROWS)
    typed = rd.read_parquet(out, partitioning=Partitioning("hive", field_types={"k": int}))
    assert typed.schema().types == [pa.float64(), pa.int64(), pa.string()]
    assert typed.sum("k") == sum(r["k"] for r in ROWS)
    assert rd.read_parquet(out, partitioning=None).columns() == ["v"]
    assert sorted(r["k"] for r in rd.read_parquet(out, columns=["k"]).take_all()) == sorted(str(r["k"]) for r in ROWS)


def test_a_filter_on_partition_columns_skips_the_files_it_rules_out(cluster, tmp_path):
    out = str(tmp_path / "hive")
    table = pa.table({"v": [float(i) for i in range(30)], "k": [i % 3 for i in range(30)]})
    pds.write_dataset(table, out, format="parquet", partitioning=["k"], partitioning_flavor="hive")
    # Spoil the data pages of every k=2 file but keep its footer: reading one would fail.
    for path in _files(os.path.join(out, "k=2")):
        data = bytearray(open(path, "rb").read())
        data[4:40] = b"\xff" * 36
        open(path, "wb").write(bytes(data))
    with pytest.raises(OSError, match="ReadParquet"):
        rd.read_parquet(out).take_all()

    kept = rd.read_parquet(out, filter=pds.field("k") != "2").take_all()
    assert sorted(r["v"] for r in kept) == [float(i) for i in range(30) if i % 3 != 2]
    typed = rd.read_parquet(out, partitioning=Partitioning("hive", field_types={"k": int}))
    assert sorted(r["v"] for r in typed.filter(expr=col("k") == 1).take_all()) == [float(i) for i in range(1, 30, 3)]
    assert typed.filter(expr="k < 2").count() == 20


def test_directory_partitioning_and_bad_values(cluster, tmp_path, monkeypatch):
    base = tmp_path / "dirs"
    for year, month in [(2024, 1), (2024, 2), (2025, 1)]:
        (base / str(year) / str(month)).mkdir(parents=True)
        pq.write_table(pa.table({"x": [year * 100 + month]}), base / str(year) / str(month) / "part.parquet")
    monkeypatch.chdir(tmp_path)  # a relative base_dir means what the relative paths do
    layout = Partitioning("dir", base_dir="dirs", field_names=["year", "month"], field_types={"year": int})
    rows = rd.read_parquet(str(base), partitioning=layout).take_all()
    assert sorted((r["year"], r["month"], r["x"]) for r in rows) == [
        (2024, "1", 202401),
        (2024, "2", 202402),
        (2025, "1", 202501),
    ]
    with pytest.raises(ValueError, match="field_names"):
        Partitioning("dir")
    with pytest.raises(ValueError, match="style"):
        Partitioning("flat")
    with pytest.raises(TypeError, match="field_types"):
        Partitioning(field_types={"year": list})
    with pytest.raises(ValueError, match="2 fields"):
        rd.read_parquet(str(base), partitioning=Partitioning("dir", base_dir=str(tmp_path), field_names=["a", "b"]))
    (base / "2024" / "k=abc").mkdir()
    pq.write_table(pa.table({"x": [1]}), base / "2024" / "k=abc" / "part.parquet")
    with pytest.raises(ValueError, match="'abc' of 'k' is not a int64"):
        rd.read_parquet(str(base / "2024"), partitioning=Partitioning(field_types={"k": int}))
    with pytest.raises(TypeError, match="partitioning"):
        rd.read_parquet(str(base), partitioning="hive")


def test_max_rows_per_file_cuts_blocks_and_bad_arguments_fail_at_the_call(cluster, tmp_path):
    ds = rd.from_items(ROWS, override_num_blocks=3)  # three blocks of 10 rows
    out = str(tmp_path / "capped")
    ds.write_parquet(out, max_rows_per_file=4)
    assert sorted(pq.read_metadata(p).num_rows for p in _files(out)) == [2, 2, 2, 4, 4, 4, 4, 4, 4]
    assert sorted(r["v"] for r in rd.read_parquet(out).take_all()) == [r["v"] for r in ROWS]
    both = str(tmp_path / "both")
    ds.write_parquet(both, min_rows_per_file=15, max_rows_per_file=15)  # two blocks a task, then cut
    assert sorted(pq.read_metadata(p).num_rows for p in _files(both)) == [5, 10, 15]
    parts = str(tmp_path / "parts")
    ds.write_parquet(parts, partition_cols=["k"], max_rows_per_file=2)
    assert max(pq.read_metadata(p).num_rows for p in _files(parts)) == 2
    assert rd.read_parquet(parts).count() == len(ROWS)

    refused = str(tmp_path / "refused")
    with pytest.raises(ValueError, match="max_rows_per_file"):
        ds.write_parquet(refused, max_rows_per_file=0)
    with pytest.raises(ValueError, match="must not be more than"):
        ds.write_parquet(refused, min_rows_per_file=5, max_rows_per_file=4)
    with pytest.raises(TypeError, match="partition_cols"):
        ds.write_parquet(refused, partition_cols="k")
    with pytest.raises(ValueError, match=r"no column\(s\) \['nope'\]"):
        ds.write_parquet(refused, partition_cols=["nope"])
    assert not os.path.exists(refused)


def test_csv_json_and_text_readers_take_partitions_too(cluster, tmp_path):
    for year in (2024, 2025):
        folder = tmp_path / "csv" / f"year={year}"
        folder.mkdir(parents=True)
        (folder / "a.csv").write_text("x,y\n1,a\n2,b\n")
        json_folder = tmp_path / "json" / f"year={year}"
        json_folder.mkdir(parents=True)
        (json_folder / "a.json").write_text('{"x": 1}\n{"x": 2}\n')
    (tmp_path / "csv" / "year=2025" / "own.csv").write_text("x,year\n3,1999\n")  # its own year column

    csv = rd.read_csv(str(tmp_path / "csv"))  # Hive partitions by default, as Ray's read_csv
    rows = sorted((r["x"], r["year"]) for r in csv.take_all())
    assert rows == [(1, "2024"), (1, "2025"), (2, "2024"), (2, "2025"), (3, 1999)]
    # A select pushed into the read asks the reader only for the file's own columns.
    assert sorted(r["year"] for r in csv.filter(lambda r: r["x"] < 3).select_columns(["year"]).take_all()) == [
        "2024",
        "2024",
        "2025",
        "2025",
    ]
    paths = rd.read_csv(str(tmp_path / "csv"), include_paths=True).select_columns(["path"]).take_all()
    assert len(paths) == 5 and all(r["path"].endswith(".csv") for r in paths)
    typed = rd.read_json(str(tmp_path / "json"), partitioning=Partitioning(field_types={"year": int}))
    assert sorted((r["x"], r["year"]) for r in typed.take_all()) == [(1, 2024), (1, 2025), (2, 2024), (2, 2025)]
    # The text, numpy, binary and ORC readers take none unless asked, as Ray's.
    assert rd.read_text(str(tmp_path / "json")).columns() == ["text"]
    hive = rd.read_text(str(tmp_path / "json"), partitioning=Partitioning("hive"))
    assert sorted(r["year"] for r in hive.take_all()) == ["2024", "2024", "2025", "2025"]
