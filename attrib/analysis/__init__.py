"""Analyses built on captures and collections.

- [`attrib.analysis.trajectories`][attrib.analysis.trajectories]: reasoning trajectories in attribution space, failure
  statistics and the online failure flagger's calibration;
- [`attrib.analysis.norms`][attrib.analysis.norms]: layer-wise hidden-state norms by token type (GAP's diagnosis);
- [`attrib.analysis.pointcopy`][attrib.analysis.pointcopy]: attention decay, copy vs source attention and late-chain
  attribution of a point-and-copy model against its base;
- [`attrib.analysis.latent`][attrib.analysis.latent]: the share of attribution through latent tokens.

Figures are drawn by [`attrib.plots`][attrib.plots]; the numbers themselves by ``metrics``.
"""
