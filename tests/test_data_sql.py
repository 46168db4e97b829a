"""read_sql and Dataset.write_sql on the shared cluster, against SQLite files (any DB API 2 connector
works the same way): one task or sharded reads, the fallback where the database cannot shard, writes
by executemany, and the database's own errors."""

import hashlib
import sqlite3

import pytest

import ember.data as rd

MOVIES = [(f"film {i}", 1950 + i % 40, round(5 + (i % 50) / 10, 1)) for i in range(250)]


def _database(path) -> str:
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE movie(title TEXT PRIMARY KEY, year INTEGER, score REAL)")
    connection.executemany("INSERT INTO movie VALUES(?, ?, ?)", MOVIES)
    connection.commit()
    connection.close()
    return str(path)


def _plain(path):
    return lambda: sqlite3.connect(path)


def _shardable(path):
    """A connection with the functions SQLite lacks for sharding (CONCAT before 3.44, MOD without
    its math functions, and MD5), as a database that has them answers."""

    def connect():
        connection = sqlite3.connect(path)
        connection.create_function("CONCAT", -1, lambda *parts: "".join(str(p) for p in parts))
        connection.create_function("MOD", 2, lambda a, b: a % b)
        connection.create_function("MD5", 1, lambda text: int(hashlib.md5(text.encode()).hexdigest()[:12], 16))
        return connection

    return connect


def _rows(ds) -> list:
    return sorted((r["title"], r["year"], r["score"]) for r in ds.take_all())


def test_read_sql_in_one_task_or_sharded(cluster, tmp_path):
    path = _database(tmp_path / "movies.db")
    whole = rd.read_sql("SELECT * FROM movie", _plain(path))
    assert whole.columns() == ["title", "year", "score"]
    assert _rows(whole) == sorted(MOVIES)
    assert whole.materialize().num_blocks() == 1
    assert rd.read_sql("SELECT year FROM movie WHERE year < 1955", _plain(path)).count() == sum(
        m[1] < 1955 for m in MOVIES
    )

    sharded = rd.read_sql("SELECT * FROM movie", _shardable(path), shard_keys=["title"], override_num_blocks=4)
    blocks = sharded.materialize()
    assert blocks.num_blocks() == 4 and _rows(blocks) == sorted(MOVIES)  # every row once, over four shards
    with pytest.warns(UserWarning, match="one task"):
        fallback = rd.read_sql("SELECT * FROM movie", _plain(path), shard_keys=["title"], override_num_blocks=4)
    assert fallback.materialize().num_blocks() == 1 and _rows(fallback) == sorted(MOVIES)
    empty = rd.read_sql("SELECT * FROM movie WHERE year > 3000", _plain(path))
    assert empty.count() == 0 and empty.columns() == ["title", "year", "score"]


def test_write_sql_inserts_every_row_and_raises_the_databases_error(cluster, tmp_path):
    path = _database(tmp_path / "movies.db")
    rd.read_sql("SELECT * FROM movie", _plain(path)).filter(lambda r: r["year"] >= 1980).repartition(3).write_sql(
        "INSERT INTO recent VALUES(?, ?, ?)", _create_recent(path)
    )
    connection = sqlite3.connect(path)
    got = sorted(connection.execute("SELECT * FROM recent").fetchall())
    connection.close()
    assert got == sorted(m for m in MOVIES if m[1] >= 1980)
    # The same titles again break the primary key: the database's own exception reaches the caller.
    items = [{"title": t, "year": y, "score": s} for t, y, s in MOVIES[:3]]
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        rd.from_items(items).write_sql("INSERT INTO movie VALUES(?, ?, ?)", _plain(path))

    with pytest.raises(ValueError, match="DB API 2"):
        rd.read_sql("SELECT 1", lambda: object()).take_all()
    with pytest.raises(TypeError, match="connection_factory"):
        rd.read_sql("SELECT 1", "sqlite:///nope.db")
    with pytest.raises(TypeError, match="shard_keys"):
        rd.read_sql("SELECT 1", _plain(path), shard_keys="title")
    with pytest.raises(ValueError, match="shard_hash_fn"):
        rd.read_sql("SELECT 1", _plain(path), shard_keys=["title"], shard_hash_fn="MD5(x)); DROP TABLE movie; --")


def _create_recent(path):
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE recent(title TEXT, year INTEGER, score REAL)")
    connection.commit()
    connection.close()
    return _plain(path)
