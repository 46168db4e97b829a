"""What an ember.data execution runs in the workers: its map tasks' bodies and its pool actors.

The executor (``ember.data.executor``) decides what runs where and when; these are the functions and
the actor class it hands to ``ember.remote``, so a worker unpickles them by reference to this module::

    executor --read task / block ref / BlockGroup's refs--> run_block, run_group, PoolWorker.process
             <--(block, metadata)-- each, the block into the store, its metadata beside it
"""

from ember.data import block as blk
from ember.data.plan import apply_stages


def run_block(stages, item, columns, limit, seq=0):
    """Body of every map task and pool call: read (if the item is a read task), then each stage."""
    for stage in stages:
        stage.index = seq  # Stage.index: a write names its file by it, a sample seeds by it
    table = item.read(columns, limit) if hasattr(item, "read") else item
    table = apply_stages(stages, table)
    return table, blk.metadata_of(table)


def slice_block(table, n):
    """Body of a limit's task: the first ``n`` rows of a block."""
    table = table.slice(0, n)
    return table, blk.metadata_of(table)


class BlockGroup:
    """Consecutive blocks one task takes together (``MapOp.min_rows``): its task concatenates them."""

    def __init__(self, bundles: list):
        self.refs = [ref for ref, _ in bundles]


def run_group(stages, columns, limit, seq, *tables):
    """Body of a task over a ``BlockGroup``: the blocks arrive as arguments, fetched by the runtime."""
    return run_block(stages, blk.concat(list(tables)), columns, limit, seq)


class PoolWorker:
    """An actor of a map's pool: builds the user's callable class once, then maps blocks."""

    def __init__(self, stages):
        self.stages = stages
        self.error = None
        try:
            for stage in stages:
                stage.setup()
        except Exception as error:
            # Kept for ready() to raise: an actor whose constructor raised reaches the caller as
            # ActorDiedError, and the user should see their own exception type instead.
            self.error = error

    def ready(self):
        if self.error is not None:
            raise self.error
        return True

    def process(self, item, columns, limit, seq=0):
        return run_block(self.stages, item, columns, limit, seq)
