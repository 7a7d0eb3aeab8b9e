"""Analyses built on captures and collections.

- :mod:`attrib.analysis.trajectories`: reasoning trajectories in attribution space, failure
  statistics and the online failure flagger's calibration;
- :mod:`attrib.analysis.norms`: layer-wise hidden-state norms by token type (GAP's diagnosis);
- :mod:`attrib.analysis.pointcopy`: attention decay, copy vs source attention and late-chain
  attribution of a point-and-copy model against its base;
- :mod:`attrib.analysis.latent`: the share of attribution through latent tokens.

Figures are drawn by :mod:`attrib.plots`; the numbers themselves by :mod:`metrics`.
"""
