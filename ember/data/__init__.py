"""ember.data: Ray Data's API on Ember's core (Arrow blocks, a streaming executor).

``import ember.data`` (or ``ember.data`` after ``import ember``) loads pyarrow; ``import ember``
alone does not.
"""

from ember.data import aggregate
from ember.data.block import BlockMetadata
from ember.data.context import DataContext, ExecutionOptions, ExecutionResources
from ember.data.data_iterator import DataIterator
from ember.data.dataset import Dataset, MaterializedDataset
from ember.data.datasink import Datasink, WriteResult
from ember.data.datasource import Datasource, ReadTask, read_datasource
from ember.data.images import read_images
from ember.data.interop import from_arrow_refs, from_numpy_refs, from_pandas_refs, from_torch
from ember.data.parquet import read_parquet
from ember.data.plan import ActorPoolStrategy, TaskPoolStrategy
from ember.data.schema import Schema
from ember.data.sinks import SaveMode
from ember.data.sources import (
    from_arrow,
    from_blocks,
    from_items,
    from_numpy,
    from_pandas,
    range,
    range_tensor,
    read_binary_files,
    read_csv,
    read_json,
    read_numpy,
    read_orc,
    read_text,
)
from ember.data.sql import read_sql

__all__ = [
    "ActorPoolStrategy",
    "BlockMetadata",
    "DataContext",
    "DataIterator",
    "Dataset",
    "Datasink",
    "Datasource",
    "ExecutionOptions",
    "ExecutionResources",
    "MaterializedDataset",
    "ReadTask",
    "SaveMode",
    "Schema",
    "TaskPoolStrategy",
    "WriteResult",
    "aggregate",
    "from_arrow",
    "from_arrow_refs",
    "from_blocks",
    "from_items",
    "from_numpy",
    "from_numpy_refs",
    "from_pandas",
    "from_pandas_refs",
    "from_torch",
    "range",
    "range_tensor",
    "read_binary_files",
    "read_csv",
    "read_datasource",
    "read_images",
    "read_json",
    "read_numpy",
    "read_orc",
    "read_parquet",
    "read_sql",
    "read_text",
]
