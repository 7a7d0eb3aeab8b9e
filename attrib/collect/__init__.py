"""Collection: features and causal targets of many examples, in resumable shards.

- :mod:`attrib.collect.pipeline`: :func:`collect` / :func:`collect_many` and their settings;
- :mod:`attrib.collect.store`: the on-disk format and :class:`Collection` for reading it;
- :mod:`attrib.collect.datasets`: where examples come from (registered kinds, JSONL files);
- :mod:`attrib.collect.ray`: the same pipeline on a Ray cluster (``pip install 'attrib[ray]'``).
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
