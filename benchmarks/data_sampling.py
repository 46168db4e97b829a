"""ember.data's sampling and row splits on a dataset already in the store: how long each takes and,
for split_at_indices, how many blocks it slices (only the blocks a cut falls inside) and how many it
shares untouched.

    PYTHONPATH=$PWD python benchmarks/data_sampling.py [--rows 20000000] [--blocks 20]
"""

import argparse
import time

import ember
import ember.data as rd


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--blocks", type=int, default=20)
    args = parser.parse_args()
    ember.init(num_cpus=2)
    try:
        ds = rd.range(args.rows, override_num_blocks=args.blocks).materialize()
        print(f"{ds.num_blocks()} blocks, {ds.size_bytes()} bytes")

        start = time.perf_counter()
        kept = ds.random_sample(0.1, seed=1).count()
        print(f"random_sample(0.1): {kept} rows kept in {time.perf_counter() - start:.2f} s")

        cuts = [args.rows * 3 // 40, args.rows // 2, args.rows * 5 // 8 + 1]
        start = time.perf_counter()
        pieces = ds.split_at_indices(cuts)
        took = time.perf_counter() - start
        source = {ref for ref, _ in ds._plan.bundles}
        sliced = sum(1 for p in pieces for ref, _ in p._plan.bundles if ref not in source)
        shared = sum(p.num_blocks() for p in pieces) - sliced
        print(f"split_at_indices({cuts}): {[p.count() for p in pieces]} rows in {took:.2f} s,")
        print(f"  {sliced} blocks sliced in tasks, {shared} shared as they were")

        start = time.perf_counter()
        pieces = ds.split_proportionately([0.1, 0.25, 0.3])
        print(f"split_proportionately: {[p.count() for p in pieces]} rows in {time.perf_counter() - start:.2f} s")

        start = time.perf_counter()
        blocks = ds.randomize_block_order(seed=0).materialize().num_blocks()
        print(f"randomize_block_order: {blocks} blocks in {time.perf_counter() - start:.2f} s")
    finally:
        ember.shutdown()


if __name__ == "__main__":
    main()
