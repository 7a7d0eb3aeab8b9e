"""Faithfulness, accuracy, region and trajectory metrics as pure functions over arrays."""

from metrics.faithfulness import MetricResult, lds, pointing_accuracy, r2, topk_drop, topk_sets
from metrics.regions import object_recall, region_purity
from metrics.stats import bootstrap_ci, mean_ci, paired_difference
from metrics.trajectory import (
    TortuosityFlagger,
    TrajectoryPCA,
    auc_by_progress,
    bonferroni,
    compare_outcomes,
    concentration,
    effect_vectors,
    net_displacement,
    path_length,
    persistence,
    prefix,
    progress_curve,
    roc_auc,
    step_lengths,
    three_outcome,
    tortuosity,
)

__all__ = [
    "MetricResult",
    "TortuosityFlagger",
    "TrajectoryPCA",
    "auc_by_progress",
    "bonferroni",
    "bootstrap_ci",
    "compare_outcomes",
    "concentration",
    "effect_vectors",
    "lds",
    "mean_ci",
    "net_displacement",
    "object_recall",
    "paired_difference",
    "path_length",
    "persistence",
    "pointing_accuracy",
    "prefix",
    "progress_curve",
    "r2",
    "region_purity",
    "roc_auc",
    "step_lengths",
    "three_outcome",
    "topk_drop",
    "topk_sets",
    "tortuosity",
]
