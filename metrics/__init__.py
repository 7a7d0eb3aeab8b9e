"""Faithfulness, accuracy and trajectory metrics as pure functions over arrays."""

from metrics.stats import bootstrap_ci, mean_ci

__all__ = ["bootstrap_ci", "mean_ci"]
