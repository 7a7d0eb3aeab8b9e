"""Capture: layer x head attention mass on image regions during generation, and span segmentation.

- [`attrib.capture.sdpa`][attrib.capture.sdpa]: the native backend (SDPA stays on; the newest
  query row is computed beside it), [`AttentionCapture`][attrib.capture.sdpa.AttentionCapture],
  [`CaptureResult`][attrib.capture.sdpa.CaptureResult]
  and the [`KeyPart`][attrib.capture.sdpa.KeyPart] through which research variants add their own tokens;
- [`attrib.capture.nnsight`][attrib.capture.nnsight]: the same features through nnsight's tracing API;
- [`attrib.capture.spans`][attrib.capture.spans]: reasoning spans, cut as tokens arrive.
"""

from attrib.capture.sdpa import (
    IMPLEMENTATION,
    AttentionCapture,
    CaptureResult,
    KeyPart,
    SpanCallback,
    TokenStreamer,
    active_capture,
    capture_generate,
    last_row_probs,
    register_implementation,
)
from attrib.capture.spans import Span, SpanSegmenter

__all__ = [
    "IMPLEMENTATION",
    "AttentionCapture",
    "CaptureResult",
    "KeyPart",
    "Span",
    "SpanCallback",
    "SpanSegmenter",
    "TokenStreamer",
    "active_capture",
    "capture_generate",
    "last_row_probs",
    "register_implementation",
]
