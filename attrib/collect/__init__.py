"""Collection: features and causal targets of many examples, in resumable shards.

- [`attrib.collect.pipeline`][attrib.collect.pipeline]: [`collect`][attrib.collect.pipeline.collect] /
[`collect_many`][attrib.collect.pipeline.collect_many] and their settings;
- [`attrib.collect.store`][attrib.collect.store]: the on-disk format and [`Collection`][attrib.collect.store.Collection]
for reading it;
- [`attrib.collect.datasets`][attrib.collect.datasets]: where examples come from (registered kinds, JSONL files);
- [`attrib.collect.ray`][attrib.collect.ray]: the same pipeline on a Ray cluster (``pip install 'attrib[ray]'``).
"""

from attrib.collect.datasets import (
    DATASETS,
    CollectItem,
    Dataset,
    DatasetKind,
    generic_judge,
    open_dataset,
    register_dataset,
)
from attrib.collect.pipeline import CollectConfig, collect, collect_many, iter_items
from attrib.collect.store import FORMAT_VERSION, Collection

__all__ = [
    "DATASETS",
    "FORMAT_VERSION",
    "CollectConfig",
    "CollectItem",
    "Collection",
    "Dataset",
    "DatasetKind",
    "collect",
    "collect_many",
    "generic_judge",
    "iter_items",
    "open_dataset",
    "register_dataset",
]
