"""iter_batches(prefetch_batches=N): the execution runs ahead in a background thread while the
consumer is busy, within the object-store budget, and ends with the consumer."""

import gc
import threading

import pytest
from conftest import wait_for

import ember.data as rd
from ember.util import state


def prefetch_threads() -> list:
    return [t for t in threading.enumerate() if t.name == "ember-data-prefetch"]


def live_pool_actors() -> list:
    return [a for a in state.list_actors() if a.class_name == "PoolWorker" and a.state != "DEAD"]


def owned_objects() -> int:
    gc.collect()
    return len(state.list_objects())


def plus_one(batch):
    return {"id": batch["id"] + 1}


def test_with_prefetch_the_execution_advances_while_the_consumer_holds_a_batch(cluster):
    blocks = 12
    ds = rd.range(1200, override_num_blocks=blocks).map_batches(plus_one)
    batches = ds.iter_batches(batch_size=None, prefetch_batches=2)
    seen = list(next(batches)["id"])
    stats = ds._last_stats
    # The consumer asks for nothing more, yet the execution goes on in the prefetch thread until the
    # next block waits fetched for the consumer.
    wait_for(lambda: stats.ops[0].blocks_out >= 2, message="a block fetched ahead in the background")
    assert len(prefetch_threads()) == 1
    for batch in batches:
        seen.extend(batch["id"])
    assert seen == list(range(1, 1201))
    assert stats.ops[0].tasks == blocks
    assert stats.peak_bytes <= stats.budget
    assert not prefetch_threads()


def test_without_prefetch_the_execution_advances_only_when_the_consumer_asks(cluster):
    blocks = 40
    ds = rd.range(4000, override_num_blocks=blocks).map_batches(plus_one)
    batches = ds.iter_batches(batch_size=None, prefetch_batches=0)
    seen = list(next(batches)["id"])
    assert not prefetch_threads()
    stats = ds._last_stats
    # One scheduling pass ran, in this thread: at most a task slot's worth of the 40 blocks exist.
    launched = stats.ops[0].tasks
    assert launched < blocks and stats.ops[0].blocks_out < blocks
    for batch in batches:
        seen.extend(batch["id"])
    assert seen == list(range(1, 4001))
    assert stats.ops[0].tasks == blocks


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_prefetch_batches_must_be_a_non_negative_int(cluster, bad):
    with pytest.raises(ValueError, match="prefetch_batches"):
        rd.range(10).iter_batches(prefetch_batches=bad)


def test_prefetch_of_a_materialized_dataset_and_of_torch_batches(cluster):
    ds = rd.range(1000, override_num_blocks=10).materialize()
    ids = [i for b in ds.iter_batches(batch_size=64, prefetch_batches=3) for i in b["id"]]
    assert ids == list(range(1000))
    ids = [i for b in ds.iter_batches(batch_size=None, prefetch_batches=1, batch_format="pandas") for i in b["id"]]
    assert ids == list(range(1000))
    assert not prefetch_threads()


def test_stopping_early_ends_the_prefetch_thread_and_the_execution(cluster):
    before = owned_objects()

    class Slow:
        def __call__(self, batch):
            import time

            time.sleep(0.05)
            return batch

    ds = rd.range(2000, override_num_blocks=40).map_batches(Slow, concurrency=(1, 2))
    batches = ds.iter_batches(batch_size=10, prefetch_batches=4)
    assert list(next(batches)["id"]) == list(range(10))
    assert len(prefetch_threads()) == 1
    batches.close()
    assert not prefetch_threads()  # close() joins it
    wait_for(lambda: not live_pool_actors(), message="the pool's actors to be killed")
    wait_for(lambda: owned_objects() <= before, message="the execution's blocks to be freed")

    # A plain break out of a for loop (the iterator is dropped) does the same.
    for batch in rd.range(5000, override_num_blocks=50).map_batches(plus_one).iter_batches(prefetch_batches=8):
        assert batch["id"][0] == 1
        break
    gc.collect()
    assert not prefetch_threads()
    wait_for(lambda: owned_objects() <= before, message="the blocks of the broken loop to be freed")


class Broken(Exception):
    pass


def test_a_user_error_reaches_the_consumer_through_the_prefetch_thread(cluster):
    def fails(batch):
        if batch["id"][0] >= 50:
            raise Broken("bad block")
        return batch

    seen = 0
    with pytest.raises(Broken, match="bad block") as info:
        for batch in rd.range(100, override_num_blocks=10).map_batches(fails).iter_batches(prefetch_batches=2):
            seen += len(batch["id"])
    assert "MapBatches(fails)" in str(info.value)
    assert seen <= 50
    info = None
    assert not prefetch_threads()


def test_the_ledgers_count_what_the_consumer_holds_and_what_waits_for_it():
    from ember.data.executor import ConsumerLedger
    from ember.data.prefetch import PrefetchLedger

    ledger = ConsumerLedger()
    for size in (10, 20, 30):
        ledger.handed(size)
    # The block in use and the one let go before it (its release may not have reached the store).
    assert ledger.held_bytes() == 50 and ledger.held_blocks() == 2 and ledger.ahead() == 0
    with pytest.raises(ValueError, match="window"):
        ConsumerLedger(window=0)

    ahead = PrefetchLedger()
    ahead.handed(10)
    ahead.handed(20)
    assert ahead.ahead() == 2 and ahead.held_bytes() == 30
    ahead.taken()
    assert ahead.ahead() == 1 and ahead.held_bytes() == 30
    ahead.handed(40)
    ahead.taken()
    ahead.taken()
    # The queue held two: a consumer draining it lets go of two at once, so besides the block in use
    # and the one before, two more stay counted.
    assert ahead.ahead() == 0 and ahead.held_bytes() == 70 and ahead.held_blocks() == 3
    for size in (1, 1, 1, 1):
        ahead.handed(size)
        ahead.taken()
    assert ahead.held_blocks() == 4 and ahead.held_bytes() == 4
    ahead.taken()  # a stream that is not an execution hands nothing over: nothing changes
    assert ahead.held_bytes() == 4
