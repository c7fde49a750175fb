"""Datasets: the SampleTable, the dataset registry, splits, image readers and planted-bias data.

``fairfm.data.prepare(name, root, out, split=..., seed=...)`` is the API behind ``fairfm datasets prepare``.
Nothing here imports torch.
"""

from fairfm.data.prepare import check, describe, load_prepared, prepare
from fairfm.data.registry import DatasetCard, DatasetSource, get_dataset, list_datasets, register_dataset
from fairfm.data.splits import SplitResult, list_split_policies, make_split, register_split

__all__ = [
    "DatasetCard",
    "DatasetSource",
    "SplitResult",
    "check",
    "describe",
    "get_dataset",
    "list_datasets",
    "list_split_policies",
    "load_prepared",
    "make_split",
    "prepare",
    "register_dataset",
    "register_split",
]
