"""Amortized attribution estimators (the L x H linear estimator) and baseline attribution methods."""
