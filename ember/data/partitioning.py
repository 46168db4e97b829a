"""Partitioned file layouts: column values carried in directory names, as Ray's ``Partitioning``.

``write_parquet(partition_cols=[...])`` writes Hive-style directories (``year=2024/month=5/``);
the readers' ``partitioning`` argument reads the values back from the paths as columns (Hive by
default for Parquet, CSV and JSON, as in Ray). In a Parquet read they are the scan's partition
expression, so a filter on them skips the files whose directories rule them out; the other readers
add them to each file's rows (``add_columns``).
"""

import dataclasses
import enum
import posixpath
import urllib.parse

import pyarrow as pa

# Hive's name for a null partition value; pyarrow writes it too.
NULL_VALUE = "__HIVE_DEFAULT_PARTITION__"
_PYTHON_TYPES = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


class PartitionStyle(str, enum.Enum):
    """How directory names carry partition values (Ray's ``PartitionStyle``)."""

    HIVE = "hive"  # name=value segments, anywhere in the path
    DIRECTORY = "dir"  # bare values, one segment per field under base_dir, named by field_names


@dataclasses.dataclass(frozen=True)
class Partitioning:
    """A partitioned layout, as Ray's ``Partitioning``: ``style`` ("hive" or "dir"), ``base_dir``
    (paths outside it are not partitioned; for "dir" the value segments start right under it),
    ``field_names`` (the fields of a "dir" layout, in path order) and ``field_types`` (a field's
    type: ``int``, ``float``, ``str``, ``bool`` or a pyarrow type; ``str`` by default).
    ``filesystem`` is accepted for Ray's signature; the read's own filesystem is the one used."""

    style: PartitionStyle | str = PartitionStyle.HIVE
    base_dir: str | None = None
    field_names: list | None = None
    field_types: dict | None = None
    filesystem: object = None

    def __post_init__(self):
        try:
            object.__setattr__(self, "style", PartitionStyle(self.style))
        except ValueError:
            raise ValueError(f"Partitioning style must be 'hive' or 'dir', got {self.style!r}.") from None
        if self.style is PartitionStyle.DIRECTORY and not self.field_names:
            raise ValueError("Partitioning('dir') needs field_names: the directories carry bare values.")
        for name, kind in (self.field_types or {}).items():
            _arrow_type(name, kind)

    def values(self, path: str) -> dict:
        """The partition values ``path`` (a file's) carries, by field name, as strings (None for
        Hive's null); empty where it is outside ``base_dir``."""
        directory = posixpath.dirname(path)
        if self.base_dir:
            base = self.base_dir.rstrip("/")
            if directory != base and not directory.startswith(base + "/"):
                return {}
            directory = directory[len(base) :]
        segments = [s for s in directory.split("/") if s]
        if self.style is PartitionStyle.DIRECTORY:
            if len(segments) != len(self.field_names):
                raise ValueError(
                    f"{path}: {len(segments)} directories under the base directory, but Partitioning('dir') "
                    f"names {len(self.field_names)} fields ({self.field_names})."
                )
            pairs = zip(self.field_names, segments)
        else:
            pairs = (s.split("=") for s in segments if s.count("=") == 1)
        return {
            name: None if value == NULL_VALUE else urllib.parse.unquote(value)
            for name, value in ((urllib.parse.unquote(n), v) for n, v in pairs)
        }

    def field_type(self, name: str) -> pa.DataType:
        return _arrow_type(name, (self.field_types or {}).get(name, str))


def _arrow_type(name: str, kind) -> pa.DataType:
    if isinstance(kind, pa.DataType):
        return kind
    if kind in _PYTHON_TYPES:
        return _PYTHON_TYPES[kind]
    raise TypeError(f"field_types[{name!r}] must be int, float, str, bool or a pyarrow type, got {kind!r}.")


def partition_fields(partitioning: Partitioning, files: list, columns: list) -> tuple:
    """For ``files`` (paths) whose data has ``columns``: the partition fields (in order of first
    appearance; a name the data has itself is the data's) and, for each file that carries values,
    its values as pyarrow scalars of the fields' types, by name (a field it lacks is null)."""
    per_file, names = {}, {}
    for path in files:
        values = {name: value for name, value in partitioning.values(path).items() if name not in columns}
        if values:
            per_file[path] = values
            names.update(dict.fromkeys(values))
    fields = [pa.field(name, partitioning.field_type(name)) for name in names]
    typed = {}
    for path, values in per_file.items():
        typed[path] = {field.name: _scalar(path, field, values.get(field.name)) for field in fields}
    return fields, typed


def _scalar(path: str, field: pa.Field, value) -> pa.Scalar:
    if value is None:
        return pa.scalar(None, field.type)
    try:
        return pa.scalar(value).cast(field.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise ValueError(f"{path}: partition value {value!r} of {field.name!r} is not a {field.type}.") from None


def expression(values: dict):
    """The pyarrow expression a file's partition values guarantee of its rows (a Parquet scan skips
    the file when a filter contradicts it)."""
    import pyarrow.dataset as pds

    terms = [pds.field(name) == v if v.is_valid else pds.field(name).is_null() for name, v in values.items()]
    result = terms[0]
    for term in terms[1:]:
        result = result & term
    return result


def add_columns(table: pa.Table, fields: list, values: dict | None) -> pa.Table:
    """``table`` (read from one file) with a column per partition field holding the file's value,
    except where the file has a column of that name itself."""
    for field in fields:
        if field.name in table.column_names:
            continue
        value = values.get(field.name) if values else None
        if value is None:
            value = pa.scalar(None, field.type)
        table = table.append_column(field, pa.repeat(value, table.num_rows))
    return table
