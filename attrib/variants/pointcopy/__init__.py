"""The v1 point-and-copy variant: the model (``.model``), ablation through copies
(``.attribution``) and its place in the pipeline (``.variant``)."""

from attrib.variants.pointcopy.attribution import PointCopyAblation
from attrib.variants.pointcopy.model import (
    COPY,
    COPY_TOKENS,
    REGION_CLOSE,
    REGION_OPEN,
    PointCopyGeneration,
    PointCopyModel,
    PointCopyOutput,
    provenance,
)
from attrib.variants.pointcopy.variant import PointCopyVariant, register

__all__ = [
    "COPY",
    "COPY_TOKENS",
    "REGION_CLOSE",
    "REGION_OPEN",
    "PointCopyAblation",
    "PointCopyGeneration",
    "PointCopyModel",
    "PointCopyOutput",
    "PointCopyVariant",
    "provenance",
    "register",
]
