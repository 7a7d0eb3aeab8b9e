"""Faithfulness, accuracy, region and trajectory metrics as pure functions over arrays."""

from metrics.faithfulness import MetricResult, lds, pointing_accuracy, r2, topk_drop, topk_sets
from metrics.regions import object_recall, region_purity
from metrics.stats import bootstrap_ci, mean_ci

__all__ = [
    "MetricResult",
    "bootstrap_ci",
    "lds",
    "mean_ci",
    "object_recall",
    "pointing_accuracy",
    "r2",
    "region_purity",
    "topk_drop",
    "topk_sets",
]
