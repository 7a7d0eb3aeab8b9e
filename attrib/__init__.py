"""attrib: faithful, streaming visual attribution for multimodal thinking models.

The curated public API (what the README's examples use) is importable from
here; each name is imported on first use, so ``import attrib`` stays cheap and
has no side effects.

Example:
    ```python
    import attrib

    m = attrib.load()  # the bundled model; or a checkpoint directory, or a hub id
    attributor = attrib.Attributor.load()
    ```
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API: dict[str, str] = {
    "load": "attrib.models.loading",
    "LoadedModel": "attrib.models.loading",
    "Attributor": "attrib.streaming.stream",
    "SpanEvent": "attrib.streaming.stream",
    "FinalEvent": "attrib.streaming.stream",
    "StreamResult": "attrib.streaming.stream",
    "AttentionCapture": "attrib.capture.sdpa",
    "CaptureResult": "attrib.capture.sdpa",
    "capture_generate": "attrib.capture.sdpa",
    "segment": "attrib.regions.methods",
    "RegionPartition": "attrib.regions.partition",
    "AblationRunner": "attrib.ablation",
    "CollectConfig": "attrib.collect.pipeline",
    "collect": "attrib.collect.pipeline",
    "collect_many": "attrib.collect.pipeline",
    "Collection": "attrib.collect.store",
    "fit_estimator": "attrib.evaluation",
    "evaluate_methods": "attrib.evaluation",
    "render_report": "attrib.streaming.report",
    "get_variant": "attrib.variants.registry",
}

__all__ = [
    "AblationRunner",
    "AttentionCapture",
    "Attributor",
    "CaptureResult",
    "CollectConfig",
    "Collection",
    "FinalEvent",
    "LoadedModel",
    "RegionPartition",
    "SpanEvent",
    "StreamResult",
    "__version__",
    "capture_generate",
    "collect",
    "collect_many",
    "evaluate_methods",
    "fit_estimator",
    "get_variant",
    "load",
    "render_report",
    "segment",
]

if TYPE_CHECKING:
    from attrib.ablation import AblationRunner
    from attrib.capture.sdpa import AttentionCapture, CaptureResult, capture_generate
    from attrib.collect.pipeline import CollectConfig, collect, collect_many
    from attrib.collect.store import Collection
    from attrib.evaluation import evaluate_methods, fit_estimator
    from attrib.models.loading import LoadedModel, load
    from attrib.regions.methods import segment
    from attrib.regions.partition import RegionPartition
    from attrib.streaming.report import render_report
    from attrib.streaming.stream import Attributor, FinalEvent, SpanEvent, StreamResult
    from attrib.variants.registry import get_variant


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'attrib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
