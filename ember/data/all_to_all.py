"""All-to-all operations: barriers that see every input block, then map/reduce over block refs."""

import bisect
import itertools

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


def _resolve(pairs) -> list:
    """(block_ref, meta_ref) pairs -> bundles, fetching only the small metadata."""
    metas = ember.get([meta for _, meta in pairs]) if pairs else []
    return list(zip([ref for ref, _ in pairs], metas))


# ---- repartition: row ranges over the blocks, no data through the driver --------------------------


def _gather_rows(start: int, count: int, *blocks):
    table = blk.concat(list(blocks)).slice(start, count)
    return table, blk.metadata_of(table)


def repartition_blocks(n: int, groups: list) -> list:
    bundles = groups[0]
    total = sum(m.num_rows for _, m in bundles)
    starts, acc = [], 0
    for _, meta in bundles:
        starts.append(acc)
        acc += meta.num_rows
    task, pairs = _remote(_gather_rows, num_returns=2), []
    for i in builtins_range(n):
        lo, hi = total * i // n, total * (i + 1) // n
        wanted = [j for j, (_, m) in enumerate(bundles) if starts[j] < hi and starts[j] + m.num_rows > lo]
        offset = lo - starts[wanted[0]] if wanted else 0
        pairs.append(task.options(name="Repartition").remote(offset, hi - lo, *[bundles[j][0] for j in wanted]))
    return _resolve(pairs)


def piece_ranges(row_counts: list, indices: list) -> list:
    """Where the cuts before the global row ``indices`` (sorted, non-negative; past the end means
    at the end) leave each piece: a list per piece of (block, offset, rows) over the blocks of
    ``row_counts``, empty for an empty piece."""
    bounds = list(itertools.accumulate(row_counts, initial=0))
    total = bounds[-1]
    cuts = [0] + [min(i, total) for i in indices] + [total]
    pieces = []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        piece = []
        block = bisect.bisect_right(bounds, lo) - 1
        while block < len(row_counts) and bounds[block] < hi:
            first, last = max(lo, bounds[block]), min(hi, bounds[block + 1])
            if first < last:
                piece.append((block, first - bounds[block], last - first))
            block += 1
        pieces.append(piece)
    return pieces


def proportion_cuts(total: int, proportions: list) -> list:
    """The row indices that split ``total`` rows by ``proportions`` (each above 0, their sum below
    1), the last piece taking the rest, under Ray's rule for pieces that round to nothing: walking
    back from the last cut, a cut that meets the next one moves one row earlier, and so does every
    cut before it. ValueError when a piece would still be empty."""
    import numpy as np

    cuts = [int(total * c) for c in np.cumsum(proportions)]
    shift = 0
    for i in builtins_range(len(cuts) - 2, -1, -1):
        cuts[i] -= shift
        if cuts[i] == cuts[i + 1]:
            shift += 1
            cuts[i] -= 1
    if any(c <= 0 for c in cuts):
        raise ValueError(f"split_proportionately: {total} rows are too few for non-empty splits by {proportions}.")
    return cuts


def split_bundles_at(bundles: list, indices: list) -> list:
    """The rows cut before the global row ``indices``: one bundle list per piece. A block inside one
    piece is shared as it is; only a block that a cut falls inside is sliced, in a task, so no rows
    pass through the driver."""
    task = _remote(_gather_rows, num_returns=2)
    pieces, pending = [], []
    for ranges in piece_ranges([m.num_rows for _, m in bundles], indices):
        piece = []
        for block, offset, rows in ranges:
            ref, meta = bundles[block]
            if rows == meta.num_rows:
                piece.append((ref, meta))
            else:
                pending.append((piece, len(piece)))
                piece.append(task.options(name="SplitAtIndices").remote(offset, rows, ref))
        pieces.append(piece)
    # One round trip for every sliced block's metadata.
    resolved = _resolve([piece[slot] for piece, slot in pending])
    for (piece, slot), bundle in zip(pending, resolved):
        piece[slot] = bundle
    return pieces


def permute_blocks(seed, groups: list) -> list:
    """The same blocks in a random order (the same order for the same ``seed`` and block count)."""
    import numpy as np

    bundles = groups[0]
    return [bundles[i] for i in np.random.default_rng(seed).permutation(len(bundles))]


# ---- map/reduce shuffles --------------------------------------------------------------------------


def _partition(table: pa.Table, n: int, how: str, arg):
    """Split one block into n parts: at random (shuffle), by key ranges (sort) or by key hash."""
    import numpy as np

    if how == "random":
        assignment = np.random.default_rng(arg).integers(0, n, table.num_rows)
    elif how == "range":
        key, boundaries, descending = arg
        values = blk.column_to_numpy(table.column(key))
        assignment = (
            np.searchsorted(np.asarray(boundaries), values, side="right")
            if len(boundaries)
            else np.zeros(table.num_rows, dtype=np.int64)
        )
        if descending:
            assignment = n - 1 - assignment
    else:
        assignment = (key_hash(table, list(arg)) % np.uint64(n)).astype(np.int64)
    parts = [table.filter(pa.array(assignment == i)) for i in builtins_range(n)]
    return tuple(parts) if n > 1 else parts[0]


def hash_stable(value) -> int:
    import zlib

    return zlib.crc32(repr(value).encode())


def _mix(bits):
    """SplitMix64's finaliser: every input bit moves every output bit (a float's low bits are zero)."""
    import numpy as np

    bits = bits ^ (bits >> np.uint64(30))
    bits = bits * np.uint64(0xBF58476D1CE4E5B9)
    bits = bits ^ (bits >> np.uint64(27))
    bits = bits * np.uint64(0x94D049BB133111EB)
    return bits ^ (bits >> np.uint64(31))


def key_hash(table: pa.Table, keys: list):
    """A 64-bit hash of each row's key values, the same in every process for the same values (so
    that a value's rows meet in one partition whichever block they came from). Vectorised: numbers
    by arithmetic on their bits, other types through a hash of each distinct value."""
    import numpy as np
    import pyarrow.compute as pc

    combined = np.zeros(table.num_rows, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for key in keys:
            column = table.column(key).combine_chunks()
            kind = column.type
            if pa.types.is_integer(kind) or pa.types.is_boolean(kind) or pa.types.is_floating(kind):
                nulls = column.is_null().to_numpy(zero_copy_only=False)
                values = column.fill_null(0).to_numpy(zero_copy_only=False)
                # Integers and floats that are equal (3 and 3.0) must hash alike: hash them as floats.
                codes = _mix(values.astype(np.float64).view(np.uint64))
                codes[nulls] = np.uint64(0x5BD1E995)
            else:
                distinct = pc.unique(column)
                per_value = np.array([hash_stable(v) for v in distinct.to_pylist()], dtype=np.uint64)
                where = pc.index_in(column, value_set=distinct, skip_nulls=False)
                codes = per_value[where.to_numpy(zero_copy_only=False).astype(np.int64)]
            combined = combined * np.uint64(1_000_003) ^ codes
    return _mix(combined)


def _reduce(how: str, arg, *parts):
    import numpy as np

    table = blk.concat(list(parts))
    if how == "random" and table.num_rows:
        table = table.take(pa.array(np.random.default_rng(arg).permutation(table.num_rows)))
    elif how == "range" and table.num_rows:
        key, descending = arg
        table = table.sort_by([(key, "descending" if descending else "ascending")])
    elif how == "hash":
        keys, fn, batch_format = arg
        table = _apply_groups(table, keys, fn, batch_format)
    return table, blk.metadata_of(table)


def _apply_groups(table, keys, fn, batch_format):
    if not table.num_rows:
        return table
    table = table.sort_by([(k, "ascending") for k in keys])
    import numpy as np

    key_arrays = [blk.column_to_numpy(table.column(k)) for k in keys]
    change = np.zeros(table.num_rows, dtype=bool)
    change[0] = True
    for values in key_arrays:
        change[1:] |= values[1:] != values[:-1]
    starts = list(np.flatnonzero(change)) + [table.num_rows]
    outputs = []
    for lo, hi in zip(starts[:-1], starts[1:]):
        outputs.append(blk.from_batch(fn(blk.to_batch(table.slice(lo, hi - lo), batch_format))))
    return blk.concat(outputs)


def shuffle_blocks(how: str, n, arg_of_map, arg_of_reduce, name: str, groups: list) -> list:
    """Map every block into n parts, then reduce part i of every block into output block i."""
    bundles = groups[0]
    n = n or max(1, len(bundles))
    mapper = _remote(_partition, num_returns=n) if n > 1 else _remote(_partition)
    parts = []
    for i, (ref, _) in enumerate(bundles):
        out = mapper.options(num_returns=n, name=f"{name}Map").remote(ref, n, how, arg_of_map(i))
        parts.append(out if n > 1 else [out])
    reducer = _remote(_reduce, num_returns=2)
    pairs = [
        reducer.options(name=f"{name}Reduce").remote(how, arg_of_reduce(j), *[p[j] for p in parts])
        for j in builtins_range(n)
    ]
    return _resolve(pairs)


def _sample(table: pa.Table, key: str, k: int):
    import numpy as np

    values = blk.column_to_numpy(table.column(key))
    if len(values) <= k:
        return values
    return values[np.linspace(0, len(values) - 1, k).astype(int)]


def sort_blocks(key: str, descending: bool, groups: list) -> list:
    import numpy as np

    bundles = groups[0]
    n = max(1, len(bundles))
    sampler = _remote(_sample)
    samples = [s for s in ember.get([sampler.remote(ref, key, 20) for ref, m in bundles if m.num_rows]) if len(s)]
    if samples:
        pool = np.sort(np.concatenate(samples))
        boundaries = [pool[len(pool) * i // n] for i in builtins_range(1, n)]
    else:
        boundaries = []
    return shuffle_blocks(
        "range", n, lambda i: (key, boundaries, descending), lambda j: (key, descending), "Sort", groups
    )


builtins_range = range
