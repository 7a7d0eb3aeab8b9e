"""Amortized attribution estimators (the L x H linear estimator) and baseline attribution methods."""

from estimators.linear import LinearHeadEstimator, subset_design

__all__ = ["LinearHeadEstimator", "subset_design"]
