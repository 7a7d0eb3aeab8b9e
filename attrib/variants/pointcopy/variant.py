"""The v1 point-and-copy variant in the pipeline: its model kind and its
[`Variant`][attrib.variants.registry.Variant]."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attrib.ablation import Ablator
from attrib.capture.sdpa import CaptureResult
from attrib.variants.base import register_research_variant
from attrib.variants.pointcopy.attribution import PointCopyAblation
from attrib.variants.pointcopy.model import PointCopyModel
from attrib.variants.registry import AblationRequest, ResearchVariant

if TYPE_CHECKING:
    from attrib.models.loading import LoadedModel

__all__ = ["PointCopyVariant", "register"]


class PointCopyVariant(ResearchVariant):
    """Copy tokens credited to their source regions (``via_copy`` part); ablation removes copies with sources."""

    name = "pointcopy"
    description = "v1 point-and-copy (copy tokens alias image tokens)"
    parts: tuple[str, ...] = ("via_copy",)
    ablation_modes: tuple[str, ...] = ("mean", "mask")

    def ablator(self, loaded: LoadedModel, request: AblationRequest) -> Ablator:
        """A [`PointCopyAblation`][attrib.variants.pointcopy.attribution.PointCopyAblation] (needs the record's copy
        sources).

        Raises:
            ValueError: Without copy sources.
        """
        sources = (request.record or {}).get("copy_sources")
        if sources is None:
            raise ValueError("point-and-copy ablation needs the trace's copy sources (record['copy_sources'])")
        return PointCopyAblation(
            loaded.model,
            request.inputs,
            request.generated_ids,
            list(sources),
            request.assignment,
            mode=request.mode,
            batch_size=request.batch_size,
        )

    def record_extras(self, result: CaptureResult, columns: slice, mode: str) -> dict[str, Any]:
        """``copy_sources``, ``ablation_mode`` and per span the via-copy share ``span_copy_share``."""
        via = result.parts["via_copy"][:, columns].sum(axis=(1, 2, 3))
        tot = result.features[:, columns].sum(axis=(1, 2, 3))
        return {
            "copy_sources": list(result.token_sources or []),
            "ablation_mode": mode,
            "span_copy_share": [float(a / b) if b > 0 else 0.0 for a, b in zip(via, tot, strict=True)],
        }


def register() -> None:
    """Register the model kind (with [`attrib.models`][attrib.models]) and the variant (with
    [`attrib.variants`][attrib.variants])."""
    register_research_variant(PointCopyModel, PointCopyVariant())
