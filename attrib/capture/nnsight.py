"""The nnsight backend of the attention capture.

For users who live in nnsight: the language model's attention implementation is
switched to ``attrib_rows``, which returns exactly what SDPA returns as the
attention output and, in the attention-weights slot (otherwise ``None`` under
SDPA), the newest query row's probabilities ``(B, H, 1, T)``. Inside an nnsight
trace of ``generate`` those rows are read from each layer's ``self_attn.output[1]``
with nnsight's own API, then reduced to regions and segmented into spans by the
same code as the native backend, so both give identical features.

nnsight 0.8 needs a bounded ``tracer.iter[:N]``, so this backend always
generates exactly ``max_new_tokens`` tokens (``min_new_tokens`` is set to it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from attrib.capture.sdpa import AttentionCapture, CaptureResult, TokenStreamer, last_row_probs, register_implementation

__all__ = ["ROWS_IMPLEMENTATION", "nnsight_capture_generate"]

ROWS_IMPLEMENTATION = "attrib_rows"


def _rows_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return out, last_row_probs(query, key, attention_mask, kwargs.get("scaling"))[:, :, None, :]


def nnsight_capture_generate(
    model: Any,
    inputs: dict[str, Any],
    assignment: Any,
    *,
    decode: Callable[[list[int]], str],
    max_new_tokens: int,
    per_token: bool = False,
    **generate_kwargs: Any,
) -> CaptureResult:
    """Capture region attention features through nnsight's tracing API.

    Args:
        model: A supported Hugging Face VLM (not an nnsight wrapper; it is wrapped here).
        inputs: Model inputs, batch size 1.
        assignment: ``(K, N_image)`` region -> token matrix or a ``TokenAssignment``.
        decode: Token ids -> text, special tokens kept.
        max_new_tokens: Exactly this many tokens are generated.
        per_token: Keep per-token features.
        **generate_kwargs: Passed to ``generate``.

    Returns:
        A [`CaptureResult`][attrib.capture.sdpa.CaptureResult] equal to the native backend's.

    Raises:
        ValueError: As [`AttentionCapture`][attrib.capture.sdpa.AttentionCapture]; also when nnsight is missing.
    """
    try:
        from nnsight import NNsight
    except ImportError as e:
        raise ValueError("the nnsight backend needs nnsight: pip install 'attrib[nnsight]'") from e
    cap = AttentionCapture(model, inputs, assignment, decode=decode, per_token=per_token)
    adapter = cap.adapter
    n_layers = cap.n_layers
    register_implementation(ROWS_IMPLEMENTATION, _rows_sdpa)
    tc = adapter.text_config(model)
    saved = tc._attn_implementation
    ids: list[int] = []
    collector = TokenStreamer(ids.append)
    tc._attn_implementation = ROWS_IMPLEMENTATION
    try:
        wrapped = NNsight(model)
        layers: Any = wrapped
        for part in adapter.layers_path.split("."):
            layers = getattr(layers, part)
        kw = {**generate_kwargs, "max_new_tokens": max_new_tokens, "min_new_tokens": max_new_tokens}
        with wrapped.trace(**inputs, fn=model.generate, streamer=collector, **kw) as tracer:
            rows: Any = list().save()  # type: ignore[attr-defined]
            for _ in tracer.iter[:max_new_tokens]:
                rows.append([getattr(layers[i], adapter.attn_attr).output[1] for i in range(n_layers)])
    finally:
        tc._attn_implementation = saved
    pos = cap.image_pos
    assign_t = np.asarray(getattr(assignment, "matrix", assignment), dtype=np.float32).T.copy()
    for step, tok in zip(rows, ids, strict=True):
        probs = torch.stack([r[0, :, -1, :] for r in step])  # (L, H, T)
        cap.push_row(probs[:, :, pos].cpu() @ torch.from_numpy(assign_t))
        cap.push_token(tok)
    return cap.result()
