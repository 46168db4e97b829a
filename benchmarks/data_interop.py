"""ember.data's interop with core refs and .npy files: how long each conversion takes over data
already in the store, and whether from_arrow_refs keeps the objects as they are (no copy).

    PYTHONPATH=$PWD python benchmarks/data_interop.py [--rows 8000000] [--blocks 8]
"""

import argparse
import tempfile
import time

import numpy as np
import pandas as pd

import ember
import ember.data as rd


def _timed(what, fn):
    start = time.perf_counter()
    result = fn()
    print(f"{what}: {time.perf_counter() - start:.2f} s")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8_000_000)
    parser.add_argument("--blocks", type=int, default=8)
    args = parser.parse_args()
    each = args.rows // args.blocks
    ember.init(num_cpus=2)
    try:
        frames = [
            ember.put(
                pd.DataFrame({"a": np.arange(i * each, (i + 1) * each), "b": np.random.default_rng(i).random(each)})
            )
            for i in range(args.blocks)
        ]
        print(f"{args.blocks} DataFrames of {each} rows (2 columns, 16 bytes a row) in the store")
        _timed("from_pandas_refs, first (workers start)", lambda: rd.from_pandas_refs(frames))
        ds = _timed("from_pandas_refs (a task converts each)", lambda: rd.from_pandas_refs(frames))
        refs = _timed("to_arrow_refs", ds.to_arrow_refs)
        again = _timed("from_arrow_refs (a task inspects each)", lambda: rd.from_arrow_refs(refs))
        print(f"  blocks kept as they were: {[r for r, _ in again._plan.bundles] == refs}")
        pandas_refs = _timed(
            "to_pandas_refs + ember.wait", lambda: ember.wait(ds.to_pandas_refs(), num_returns=args.blocks)
        )
        numpy_refs = _timed(
            "to_numpy_refs(column='b') + ember.wait",
            lambda: ember.wait(ds.to_numpy_refs(column="b"), num_returns=args.blocks),
        )
        del pandas_refs, numpy_refs
        with tempfile.TemporaryDirectory() as root:
            _timed("write_numpy(column='b')", lambda: ds.write_numpy(root, column="b"))
            total = _timed("read_numpy(...).sum('data')", lambda: rd.read_numpy(root).sum("data"))
            expected = sum(np.random.default_rng(i).random(each).sum() for i in range(args.blocks))
            print(f"  sum matches: {np.isclose(total, expected)}")
    finally:
        ember.shutdown()


if __name__ == "__main__":
    main()
