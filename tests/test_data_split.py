"""Dataset.streaming_split: one execution feeding n concurrent consumers, epoch after epoch."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ember
import ember.data as rd
from ember.data.split_coordinator import SplitDealer


@given(n=st.integers(1, 5), blocks=st.lists(st.integers(0, 23), max_size=12))
def test_an_equal_dealer_gives_every_split_the_same_rows_and_drops_fewer_than_n(n, blocks):
    dealer = SplitDealer(n, equal=True)
    for number, rows in enumerate(blocks):
        dealer.deal(number % n, f"block{number}", rows)
    shares = [dealer.take(split) for split in range(n)]
    rows_of = [[(ref, start + i) for ref, _, start, length in share for i in range(length)] for share in shares]
    assert len({len(rows) for rows in rows_of}) == 1  # equal
    dealt = [row for rows in rows_of for row in rows]
    assert len(dealt) == len(set(dealt))  # disjoint
    assert sum(blocks) - len(dealt) < n  # complete but for the remainder
    assert all(start + length <= total for share in shares for _, total, start, length in share)


def test_an_unequal_dealer_gives_whole_blocks_to_whoever_asked():
    dealer = SplitDealer(2, equal=False)
    dealer.deal(1, "a", 10)
    dealer.deal(1, "b", 0)  # an empty block goes to nobody
    dealer.deal(0, "c", 5)
    assert dealer.take(1) == [("a", 10, 0, 10)] and dealer.take(0) == [("c", 5, 0, 5)]
    assert dealer.take(0) == []


@ember.remote(num_cpus=0)
class Consumer:
    def __init__(self, shard):
        self.shard = shard

    def epoch(self, stop_after=None):
        ids = []
        for batch in self.shard.iter_batches(batch_size=7, batch_format="numpy"):
            ids.extend(batch["id"].tolist())
            if stop_after is not None and len(ids) >= stop_after:
                break
        return ids


def test_equal_shards_are_disjoint_equal_and_complete_every_epoch(cluster):
    ds = rd.range(203, override_num_blocks=9).map_batches(lambda b: {"id": b["id"] * 2})
    consumers = [Consumer.remote(shard) for shard in ds.streaming_split(2, equal=True)]
    for _ in range(2):  # two epochs: the dataset runs again for each
        a, b = ember.get([c.epoch.remote() for c in consumers])
        assert len(a) == len(b) == 101
        every = set(range(0, 406, 2))  # 203 rows: one is dropped so that the shares are equal
        assert not set(a) & set(b) and set(a) | set(b) <= every and len(set(a) | set(b)) == 202


def test_unequal_shards_cover_every_row_once(cluster):
    ds = rd.range(500, override_num_blocks=10)
    consumers = [Consumer.remote(shard) for shard in ds.streaming_split(3)]
    shares = ember.get([c.epoch.remote() for c in consumers])
    assert sorted(row for share in shares for row in share) == list(range(500))


def test_a_consumer_that_leaves_an_epoch_early_does_not_stop_the_next(cluster):
    ds = rd.range(300, override_num_blocks=6)
    consumers = [Consumer.remote(shard) for shard in ds.streaming_split(2, equal=True)]
    first = ember.get([consumers[0].epoch.remote(stop_after=10), consumers[1].epoch.remote()])
    assert len(first[0]) >= 10 and len(first[1]) == 150
    second = ember.get([c.epoch.remote() for c in consumers])
    assert sorted(second[0] + second[1]) == list(range(300))


def test_a_failing_function_reaches_every_consumer_as_the_users_error(cluster):
    def explode(batch):
        if batch["id"][0] >= 200:
            raise KeyError("no such sample")
        return batch

    ds = rd.range(400, override_num_blocks=4).map_batches(explode)
    consumers = [Consumer.remote(shard) for shard in ds.streaming_split(2)]
    for ref in [c.epoch.remote() for c in consumers]:
        with pytest.raises(KeyError, match="no such sample"):
            ember.get(ref)


def test_shards_iterate_in_the_driver_as_torch_batches_and_iterator_passes(cluster):
    torch = pytest.importorskip("torch")
    ds = rd.range(64, override_num_blocks=4)
    (shard,) = ds.streaming_split(1)
    batches = list(shard.iter_torch_batches(batch_size=16, dtypes=torch.float32))
    assert [b["id"].dtype for b in batches] == [torch.float32] * 4
    assert torch.cat([b["id"] for b in batches]).tolist() == [float(i) for i in range(64)]
    assert [r["id"] for r in shard.iter_rows()] == list(range(64))  # a second epoch
    iterator = ds.iterator()
    assert [r["id"] for r in iterator.iter_rows()] == list(range(64))
    assert iterator.materialize().count() == 64
