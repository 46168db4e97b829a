"""Turning a stream of blocks into rows and batches for the consumer."""

import numpy as np
import pyarrow as pa

import ember
from ember.data import block as blk


def tables(bundles):
    """The tables of ``(ref, metadata)`` blocks, or of ``(ref, None, start, length)`` slices of them
    (a streaming split's share), in order."""
    # Closing the bundle stream (an error, a break, KeyboardInterrupt in the consumer) stops the
    # execution behind it at once, not when the generator is garbage collected.
    try:
        for ref, meta, *piece in bundles:
            if piece:
                if piece[1]:
                    yield ember.get(ref).slice(*piece)
            elif meta.num_rows:
                yield ember.get(ref)
    finally:
        bundles.close() if hasattr(bundles, "close") else None


def fetch_table(bundles) -> pa.Table:
    return blk.concat(list(tables(bundles)))


def iter_rows(bundles):
    for table in tables(bundles):
        yield from blk.iter_rows(table)


def iter_batches(stream, *, batch_size, batch_format, drop_last=False, shuffle_buffer=None, seed=None):
    """Batches of exactly ``batch_size`` rows (the last may be short unless ``drop_last``) from a
    generator of tables (``tables(bundles)``, or a prefetcher's)."""
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}.")
    if shuffle_buffer is not None and (not isinstance(shuffle_buffer, int) or shuffle_buffer < 1):
        raise ValueError(f"local_shuffle_buffer_size must be a positive int, got {shuffle_buffer!r}.")
    return _iter_batches(stream, batch_size, batch_format, drop_last, shuffle_buffer, seed)


def _iter_batches(stream, batch_size, batch_format, drop_last, shuffle_buffer, seed):
    try:
        if batch_size is None and shuffle_buffer is None:
            for table in stream:
                yield blk.to_batch(table, batch_format, zero_copy=True)
            return
        size = batch_size or 256
        rng = np.random.default_rng(seed) if shuffle_buffer is not None else None
        # Rows that wait for a full batch (or, with a shuffle buffer, for enough company to shuffle).
        pending, pending_rows = [], 0
        want = size if rng is None else shuffle_buffer + size
        for table in stream:
            pending.append(table)
            pending_rows += table.num_rows
            while pending_rows >= want:
                buffer = blk.concat(pending)
                if rng is not None:
                    buffer = buffer.take(pa.array(rng.permutation(buffer.num_rows)))
                yield blk.to_batch(buffer.slice(0, size), batch_format, zero_copy=True)
                rest = buffer.slice(size)
                pending, pending_rows = [rest], rest.num_rows
        if pending_rows:
            buffer = blk.concat(pending)
            if rng is not None:
                buffer = buffer.take(pa.array(rng.permutation(buffer.num_rows)))
            for start in range(0, buffer.num_rows, size):
                piece = buffer.slice(start, size)
                if piece.num_rows < size and drop_last:
                    break
                yield blk.to_batch(piece, batch_format, zero_copy=True)
    finally:
        stream.close()


def torch_batches(batches, dtypes, device):
    """Numpy batches as dicts of torch tensors (``dtypes``: one dtype or one per column)."""
    import torch

    for batch in batches:
        out = {}
        for name, values in batch.items():
            dtype = dtypes.get(name) if isinstance(dtypes, dict) else dtypes
            # torch refuses read-only memory (a zero-copy batch from the store is read-only).
            tensor = torch.as_tensor(values.copy() if not values.flags.writeable else values, dtype=dtype)
            out[name] = tensor if device in (None, "auto", "cpu") else tensor.to(device)
        yield out
