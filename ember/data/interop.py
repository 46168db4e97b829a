"""Datasets over objects already in the object store, a dataset's blocks handed out as refs in other
formats, and torch datasets as sources.

``from_*_refs`` convert (or, for Arrow tables, only inspect) each object in a task of its own, as Ray
does, and wait for the small metadata only: the dataset is materialized at the call, and a ref to
the wrong kind of object fails there, naming the type it holds. ``to_*_refs`` convert each block in a
task too, so no block is pulled to the driver.
"""

import functools
import itertools

import numpy as np
import pyarrow as pa

import ember
from ember.data import block as blk
from ember.data.all_to_all import _remote, _resolve
from ember.data.plan import InputData, Read
from ember.data.sources import BlockReadTask


def _ref_list(what: str, refs) -> list:
    if isinstance(refs, ember.ObjectRef):
        return [refs]
    if not isinstance(refs, (list, tuple)):
        raise TypeError(f"{what} expects an ObjectRef or a list of ObjectRefs, got {type(refs).__name__}.")
    for ref in refs:
        if not isinstance(ref, ember.ObjectRef):
            raise TypeError(f"{what} expects ObjectRefs, got a list holding a {type(ref).__name__}.")
    return list(refs)


def _materialized(name: str, bundles: list):
    from ember.data.dataset import MaterializedDataset

    return MaterializedDataset(InputData(bundles, name))


def _wrong_type(what: str, index: int, obj, wanted: str):
    kind = type(obj)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return TypeError(f"{what}: object {index} is a {name}, not {wanted}.")


# ---- from refs: the tasks' bodies -----------------------------------------------------------------


def _pandas_block(df, index):
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise _wrong_type("from_pandas_refs", index, df, "a pandas.DataFrame")
    table = pa.Table.from_pandas(df, preserve_index=False)
    return table, blk.metadata_of(table)


def _numpy_block(obj, index):
    if isinstance(obj, np.ndarray):
        if obj.ndim == 0:
            raise ValueError(f"from_numpy_refs: object {index} is a 0-d array; rows need a first axis.")
        table = pa.table({"data": blk._array_of(obj)})
    elif isinstance(obj, dict) and obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        table = blk.from_batch(obj)
    else:
        raise _wrong_type("from_numpy_refs", index, obj, "a numpy.ndarray or a dict of numpy.ndarrays")
    return table, blk.metadata_of(table)


def _arrow_metadata(obj, index):
    """(None, (False, metadata)) for a Table, which stays the block as it is; (table, (True,
    metadata)) for the bytes of an Arrow IPC stream (as Ray takes them), read into a new block."""
    if isinstance(obj, pa.Table):
        return None, (False, blk.metadata_of(obj))
    if isinstance(obj, (bytes, bytearray, memoryview)):
        table = pa.ipc.open_stream(pa.py_buffer(obj)).read_all()
        return table, (True, blk.metadata_of(table))
    raise _wrong_type("from_arrow_refs", index, obj, "a pyarrow.Table or the bytes of an Arrow IPC stream")


def _converted(name: str, fn, refs: list) -> list:
    task = _remote(fn, num_returns=2)
    return _resolve([task.options(name=name).remote(ref, i) for i, ref in enumerate(refs)])


def from_pandas_refs(dfs):
    """A materialized dataset with one block per pandas DataFrame already in the object store
    (``dfs``: an ObjectRef or a list of them); each is converted to Arrow by a task."""
    return _materialized("FromPandas", _converted("FromPandas", _pandas_block, _ref_list("from_pandas_refs", dfs)))


def from_numpy_refs(ndarrays):
    """A materialized dataset with one block per numpy array already in the object store, in the
    column ``"data"`` (one row per first-axis entry); a dict of equal-length arrays gives a block
    with those columns."""
    refs = _ref_list("from_numpy_refs", ndarrays)
    return _materialized("FromNumpy", _converted("FromNumpy", _numpy_block, refs))


def from_arrow_refs(tables):
    """A materialized dataset whose blocks are the pyarrow Tables already in the object store: the
    objects themselves, not copies (a task reads each one's metadata). A ref may also hold the bytes
    of an Arrow IPC stream, which its task reads into a block."""
    refs = _ref_list("from_arrow_refs", tables)
    task = _remote(_arrow_metadata, num_returns=2)
    pairs = [task.options(name="FromArrow").remote(ref, i) for i, ref in enumerate(refs)]
    answers = ember.get([answer for _, answer in pairs])
    bundles = [(block if converted else ref, meta) for ref, (block, _), (converted, meta) in zip(refs, pairs, answers)]
    return _materialized("FromArrow", bundles)


# ---- to refs --------------------------------------------------------------------------------------


def _block_to_numpy(table, column):
    if column is None:
        return blk.to_batch(table, "numpy", zero_copy=True)
    return blk.column_to_numpy(table.column(column), zero_copy=True)


def pandas_refs(bundles: list) -> list:
    task = _remote(blk.to_pandas)
    return [task.options(name="ToPandas").remote(ref) for ref, _ in bundles]


def numpy_refs(bundles: list, column) -> list:
    if column is not None:
        if not isinstance(column, str):
            raise TypeError(f"to_numpy_refs: column must be a str or None, got {type(column).__name__}.")
        for _, meta in bundles:
            if meta.schema is not None and meta.schema.names and column not in meta.schema.names:
                raise ValueError(f"to_numpy_refs: no column {column!r} in {meta.schema.names}.")
    task = _remote(_block_to_numpy)
    return [task.options(name="ToNumpy").remote(ref, column) for ref, _ in bundles]


# ---- torch ----------------------------------------------------------------------------------------


def _torch_item(item):
    import torch

    # A tensor becomes an ndarray, so that a column of equal-shaped tensors is a tensor column.
    return item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else item


def _torch_rows(dataset, columns, limit):
    import torch

    if isinstance(dataset, torch.utils.data.IterableDataset):
        items = iter(dataset)
    else:
        items = (dataset[i] for i in range(len(dataset)))
    if limit is not None:
        items = itertools.islice(items, limit)
    return blk.from_rows([{"item": _torch_item(item)} for item in items])


def from_torch(dataset, local_read: bool = False):
    """A dataset of a torch ``Dataset``'s samples, one row ``{"item": sample}`` each (a tensor sample
    becomes a numpy array), read in order by one read task, as Ray reads it. A map-style dataset is
    read by index (``len`` and ``[i]``), an ``IterableDataset`` by iterating it. With ``local_read``
    the samples are read here, in the calling process (for data only this machine can reach)."""
    import torch

    if not isinstance(dataset, torch.utils.data.Dataset):
        raise TypeError(f"from_torch expects a torch.utils.data.Dataset, got {type(dataset).__name__}.")
    iterable = isinstance(dataset, torch.utils.data.IterableDataset)
    if not iterable and not hasattr(dataset, "__len__"):
        raise TypeError(f"from_torch: the map-style dataset {type(dataset).__name__} has no __len__.")
    from ember.data.dataset import Dataset

    if local_read:
        table = _torch_rows(dataset, None, None)
        return Dataset(InputData([(ember.put(table), blk.metadata_of(table))], "ReadTorch"))
    rows = None if iterable else len(dataset)
    return Dataset(Read("ReadTorch", [BlockReadTask(functools.partial(_torch_rows, dataset), num_rows=rows)]))
