"""Ember's main demo: start a local cluster, run tasks, an actor and a large array through the store.

Run with ``python examples/demo.py``; it prints what it did and leaves nothing running.
"""

import time

import numpy as np

import ember


@ember.remote
def square(x):
    return x * x


@ember.remote
def column_means(matrix):
    # ``matrix`` arrives as a read-only view on shared memory: no copy was made to pass it here.
    return matrix.mean(axis=0)


@ember.remote
class Accumulator:
    def __init__(self):
        self.total = 0

    def add(self, value):
        self.total += value
        return self.total


def main() -> None:
    started = time.perf_counter()
    context = ember.init()
    print(f"started {context} in {time.perf_counter() - started:.2f} s")

    squares = ember.get([square.remote(i) for i in range(100)])
    print(f"100 tasks: sum of squares 0..99 = {sum(squares)}")

    accumulator = Accumulator.remote()
    totals = ember.get([accumulator.add.remote(i) for i in range(1, 11)])
    print(f"actor: running totals {totals}")

    matrix = np.random.default_rng(0).random((4_000, 8_000))  # 256 MB
    t = time.perf_counter()
    ref = ember.put(matrix)
    put_seconds = time.perf_counter() - t
    t = time.perf_counter()
    view = ember.get(ref)
    get_seconds = time.perf_counter() - t
    means = ember.get(column_means.remote(ref))
    print(
        f"store: put {matrix.nbytes / 2**20:.0f} MiB in {put_seconds:.3f} s, "
        f"got it back in {get_seconds * 1000:.1f} ms "
        f"as a zero-copy view (owns its data: {view.flags.owndata}, writeable: {view.flags.writeable})"
    )
    print(f"task on the stored matrix: column means match numpy: {np.allclose(means, matrix.mean(axis=0))}")

    ember.shutdown()
    print(f"done in {time.perf_counter() - started:.2f} s; cluster stopped")


if __name__ == "__main__":
    main()
