"""A training-time fast path for the Qwen2.5-VL vision tower on CPU.

Two modules of the stock vision tower are slow on a small CPU for reasons that
have nothing to do with the arithmetic they do:

* ``Qwen2_5_VisionPatchEmbed`` runs a ``Conv3d`` whose kernel equals its stride
  and its input, i.e. a matrix product done by a convolution kernel (about
  60 ms of a 0.78 s step on the bundled size, forward plus backward);
* ``Qwen2_5_VLVisionAttention`` under sdpa loops in Python over every attention
  window of every image (for a batch of 16 224-px images, 160 small SDPA calls
  per forward pass, profiled).

[`vision_fast_path`][attrib.shapes.fastpath.vision_fast_path] swaps both, on one model instance and only inside a
``with`` block, for the same functions computed as one matrix product and one
batched SDPA call over equal-length windows (falling back to the stock loop
when windows differ in length). The parameters are the model's own, so what is
trained and saved is an unchanged ``Qwen2_5_VLForConditionalGeneration``; the
outputs match the stock modules to float rounding (tested).
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

__all__ = ["vision_fast_path"]


def _patch_embed_forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    w = self.proj.weight
    flat = hidden_states.reshape(-1, w[0].numel()).to(w.dtype)
    return F.linear(flat, w.reshape(w.shape[0], -1))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _attention_forward(
    self: Any,
    hidden_states: torch.Tensor,
    cu_seqlens: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_seqlen: int | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    if position_embeddings is None or lengths.numel() == 0 or bool((lengths != lengths[0]).any()):
        return type(self).forward(self, hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs)
    seq, n_chunks, win = hidden_states.shape[0], lengths.numel(), int(lengths[0])
    q, k, v = self.qkv(hidden_states).reshape(seq, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = (t.unsqueeze(-2).float() for t in position_embeddings)
    dtype = q.dtype
    q = (q.float() * cos + _rotate_half(q.float()) * sin).to(dtype)
    k = (k.float() * cos + _rotate_half(k.float()) * sin).to(dtype)

    def windows(t: torch.Tensor) -> torch.Tensor:  # (seq, heads, d) -> (chunks, heads, win, d)
        return t.reshape(n_chunks, win, self.num_heads, -1).transpose(1, 2)

    drop = self.attention_dropout if self.training else 0.0
    out = F.scaled_dot_product_attention(windows(q), windows(k), windows(v), dropout_p=drop, scale=self.scaling)
    return self.proj(out.transpose(1, 2).reshape(seq, -1))


@contextmanager
def vision_fast_path(model: nn.Module) -> Iterator[int]:
    """Use the fast patch embedding and batched window attention inside the block.

    Args:
        model: A model containing Qwen2/2.5-VL vision modules (others are left alone).

    Yields:
        The number of modules patched (0 when the model has none).

    The stock ``forward`` methods are restored when the block exits, also on error.
    """
    patched: list[nn.Module] = []
    try:
        for mod in model.modules():
            name = type(mod).__name__
            if name == "Qwen2_5_VisionPatchEmbed" or (
                name == "PatchEmbed" and isinstance(getattr(mod, "proj", None), nn.Conv3d)
            ):
                mod.forward = types.MethodType(_patch_embed_forward, mod)  # type: ignore[method-assign]
                patched.append(mod)
            elif name == "Qwen2_5_VLVisionAttention":
                mod.forward = types.MethodType(_attention_forward, mod)  # type: ignore[method-assign]
                patched.append(mod)
        yield len(patched)
    finally:
        for mod in patched:
            if "forward" in mod.__dict__:
                del mod.forward
