"""Region unitization: semantic regions (DINOv3 or colour features + Ward) and geometric baselines,
mapped onto each model family's visual tokens."""

from attrib.regions.geometry import GRID_SPECS, GridSpec, TokenGrid, get_grid_spec, register_grid_spec
from attrib.regions.methods import (
    REGION_METHODS,
    DinoV3Features,
    Segmenter,
    check_region_method,
    cluster_features,
    register_region_method,
    segment,
)
from attrib.regions.partition import RegionPartition, TokenAssignment

__all__ = [
    "GRID_SPECS",
    "REGION_METHODS",
    "DinoV3Features",
    "GridSpec",
    "RegionPartition",
    "Segmenter",
    "TokenAssignment",
    "TokenGrid",
    "check_region_method",
    "cluster_features",
    "get_grid_spec",
    "register_grid_spec",
    "register_region_method",
    "segment",
]
