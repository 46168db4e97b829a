"""All-to-all operations: barriers that see every input block, then map/reduce over block refs."""

import pyarrow as pa

import ember
from ember.data import block as blk


def _zip_task(left: pa.Table, offset: int, *rights):
    right = blk.concat(list(rights)).slice(offset, left.num_rows)
    names = list(left.column_names)
    table = left
    for name in right.column_names:
        new = name
        while new in names:
            new = f"{new}_1"
        names.append(new)
        table = table.append_column(new, right.column(name))
    return table, blk.metadata_of(table)


_REMOTE = {}


def _remote(fn, **options):
    if fn not in _REMOTE:
        _REMOTE[fn] = ember.remote(**options)(fn)
    return _REMOTE[fn]


def zip_blocks(groups: list) -> list:
    """Align the right side's rows to the left side's blocks: one task per left block."""
    left, right = groups
    left_rows = sum(m.num_rows for _, m in left)
    right_rows = sum(m.num_rows for _, m in right)
    if left_rows != right_rows:
        raise ValueError(f"zip needs datasets of equal row counts, got {left_rows} and {right_rows}.")
    starts, total = [], 0
    for _, meta in right:
        starts.append(total)
        total += meta.num_rows
    out, position = [], 0
    task = _remote(_zip_task, num_returns=2)
    for ref, meta in left:
        end = position + meta.num_rows
        wanted = [i for i, (_, m) in enumerate(right) if starts[i] < end and starts[i] + m.num_rows > position]
        if not wanted:  # an empty left block
            wanted = [0] if right else []
        offset = position - starts[wanted[0]] if wanted else 0
        block_ref, meta_ref = task.options(name="Zip").remote(ref, offset, *[right[i][0] for i in wanted])
        out.append((block_ref, meta_ref))
        position = end
    return [(block_ref, ember.get(meta_ref)) for block_ref, meta_ref in out]
