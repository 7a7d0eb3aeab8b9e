"""``attrib norms``: layer-wise hidden-state norms by token type, against the input embeddings of that type.

Why: models that feed their own decoder hidden states back as input tokens
("latent visual tokens") put vectors from one norm regime where the model
expects another (the GAP paper measures text hidden states at ≈546× the norm of
text input embeddings in Monet-7B). This measures that mismatch on any
supported model.

Definitions. For each input, one forward with ``output_hidden_states=True``.
transformers returns ``L + 1`` hidden states: entry 0 is the input to the first
decoder layer (the input embeddings, with the image features already scattered
in at the image positions), entry ``l`` the output of layer ``l``; the last
entry is taken after the final norm, as transformers returns it. For every
token type ``t`` (text, image, and the variants' copy and latent types when a
type map is given) and layer ``l``:

- ``mean_norm[t][l]``: mean L2 norm of the hidden states of type-``t`` tokens;
- ``ratio_same_type[t][l] = mean_norm[t][l] / mean_norm[t][0]``: against the input embeddings of
  the same type;
- ``ratio_to_text_input[t][l] = mean_norm[t][l] / mean_norm["text"][0]``: what a hidden state fed
  back as an input token would be, relative to the text input embeddings it sits among.

Means pool every token of a type over all inputs (a token-weighted mean).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from attrib.models.loading import LoadedModel

__all__ = ["TOKEN_TYPES", "NormReport", "measure_norms", "model_norms", "norm_report", "token_types"]

logger = logging.getLogger(__name__)

#: Token types, by code: 0 text, 1 image, 2 copy, 3 latent.
TOKEN_TYPES: tuple[str, ...] = ("text", "image", "copy", "latent")


@dataclass
class NormReport:
    """Layer-wise norms by token type.

    Attributes:
        mean_norm: Type -> ``(L + 1,)`` mean L2 norm per hidden-state entry (0 = input embeddings).
        n_tokens: Type -> number of tokens pooled.
        model: Model name or path.
        n_inputs: Inputs measured.
    """

    mean_norm: dict[str, np.ndarray]
    n_tokens: dict[str, int]
    model: str = ""
    n_inputs: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        """Decoder layers (hidden-state entries minus one)."""
        return len(next(iter(self.mean_norm.values()))) - 1

    def ratio_same_type(self, t: str) -> np.ndarray:
        """``mean_norm[t] / mean_norm[t][0]``."""
        m = self.mean_norm[t]
        return m / m[0] if m[0] > 0 else np.full_like(m, np.nan)

    def ratio_to_text_input(self, t: str) -> np.ndarray:
        """``mean_norm[t] / mean_norm["text"][0]`` (NaN without text tokens)."""
        if "text" not in self.mean_norm or self.mean_norm["text"][0] <= 0:
            return np.full_like(self.mean_norm[t], np.nan)
        return self.mean_norm[t] / self.mean_norm["text"][0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict.

        ``ratios`` maps each token type to its last-layer hidden norm over its input-embedding
        norm (``ratio_same_type[t][-1]``); ``types`` holds, per type, ``mean_norm``,
        ``ratio_same_type``, ``ratio_to_text_input`` and ``n_tokens`` for every layer.
        """
        return {
            "model": self.model,
            "n_inputs": self.n_inputs,
            "n_layers": self.n_layers,
            "ratios": {t: float(self.ratio_same_type(t)[-1]) for t in self.mean_norm},
            "types": {
                t: {
                    "n_tokens": self.n_tokens[t],
                    "mean_norm": [float(v) for v in m],
                    "ratio_same_type": [float(v) for v in self.ratio_same_type(t)],
                    "ratio_to_text_input": [float(v) for v in self.ratio_to_text_input(t)],
                }
                for t, m in self.mean_norm.items()
            },
            **self.meta,
        }

    def table(self) -> list[dict[str, Any]]:
        """Rows ``{layer, <type>_norm, <type>_ratio, <type>_ratio_to_text_input}`` for printing."""
        rows = []
        for layer in range(self.n_layers + 1):
            row: dict[str, Any] = {"layer": layer}
            for t in self.mean_norm:
                row[f"{t}_norm"] = float(self.mean_norm[t][layer])
                row[f"{t}_ratio"] = float(self.ratio_same_type(t)[layer])
                row[f"{t}_ratio_to_text_input"] = float(self.ratio_to_text_input(t)[layer])
            rows.append(row)
        return rows

    def plot(self, path: str | Path | None = None) -> Any:
        """Two panels: mean norm per layer by type, and the ratio to the same type's input embeddings (log y).

        Returns:
            The matplotlib figure (see [`attrib.plots.norms_plot`][attrib.plots.norms_plot]).
        """
        from attrib.plots import norms_plot

        return norms_plot(self, path)


def token_types(input_ids: torch.Tensor, image_token_id: int, overrides: dict[int, int] | None = None) -> np.ndarray:
    """Per-token type codes of one sequence: 1 at image tokens, 0 elsewhere, then ``overrides`` (position -> code).

    Args:
        input_ids: ``(T,)`` or ``(1, T)`` token ids.
        image_token_id: The model's image placeholder id.
        overrides: Positions of copy (2) or latent (3) tokens, for the research variants.

    Raises:
        ValueError: For a code outside ``TOKEN_TYPES`` or a position outside the sequence.
    """
    ids = input_ids.reshape(-1).cpu().numpy()
    out = (ids == image_token_id).astype(np.int64)
    for pos, code in (overrides or {}).items():
        if not 0 <= code < len(TOKEN_TYPES):
            raise ValueError(f"token type code {code} is not one of 0..{len(TOKEN_TYPES) - 1} ({TOKEN_TYPES})")
        if not 0 <= pos < out.size:
            raise ValueError(f"token position {pos} is outside the sequence of {out.size} tokens")
        out[pos] = code
    return out


class _Pool:
    """Token-weighted sums of norms per type and hidden-state entry."""

    def __init__(self) -> None:
        self.sums: dict[int, np.ndarray] = {}
        self.counts: dict[int, int] = {}
        self.n_entries: int | None = None
        self.n_inputs = 0

    def add(self, hs: Sequence[torch.Tensor], ty: np.ndarray) -> None:
        ty = np.asarray(ty).reshape(-1)
        if self.n_entries is None:
            self.n_entries = len(hs)
        elif len(hs) != self.n_entries:
            raise ValueError(f"inputs disagree on the number of hidden-state entries: {self.n_entries} vs {len(hs)}")
        norms = torch.stack([h.reshape(-1, h.shape[-1]).float().norm(dim=-1) for h in hs]).cpu().numpy()  # (E, T)
        if norms.shape[1] != ty.size:
            raise ValueError(f"{ty.size} token types for a sequence of {norms.shape[1]} hidden states")
        for code in np.unique(ty):
            sel = ty == code
            self.sums[int(code)] = self.sums.get(int(code), np.zeros(self.n_entries)) + norms[:, sel].sum(1)
            self.counts[int(code)] = self.counts.get(int(code), 0) + int(sel.sum())
        self.n_inputs += 1

    def report(self, model: str) -> NormReport:
        if self.n_inputs == 0:
            raise ValueError("no inputs to measure")
        mean = {TOKEN_TYPES[c]: self.sums[c] / self.counts[c] for c in sorted(self.sums)}
        counts = {TOKEN_TYPES[c]: self.counts[c] for c in sorted(self.counts)}
        return NormReport(mean, counts, model=model, n_inputs=self.n_inputs)


def norm_report(
    hidden_states: Iterable[Sequence[torch.Tensor]], types: Iterable[np.ndarray], *, model: str = ""
) -> NormReport:
    """Pool hidden-state norms by token type.

    Args:
        hidden_states: Per input, the ``L + 1`` hidden states ``(1, T, D)`` (or ``(T, D)``).
        types: Per input, ``(T,)`` type codes (see [`token_types`][attrib.analysis.norms.token_types]).
        model: Name for the report.

    Raises:
        ValueError: If shapes disagree, or no input is given.
    """
    pool = _Pool()
    for hs, ty in zip(hidden_states, types, strict=True):
        pool.add(hs, ty)
    return pool.report(model)


@torch.inference_mode()
def measure_norms(
    model: Any,
    inputs: Iterable[dict[str, torch.Tensor]],
    *,
    image_token_id: int | None = None,
    type_overrides: Sequence[dict[int, int]] | None = None,
    name: str = "",
) -> NormReport:
    """Measure layer-wise norms by token type on ``inputs`` (one forward each; nothing large is kept).

    Args:
        model: A supported VLM (or any model whose forward accepts ``output_hidden_states``).
        inputs: Model inputs, batch 1 each.
        image_token_id: The image placeholder id (default: from the model's adapter).
        type_overrides: Per input, copy/latent positions (see [`token_types`][attrib.analysis.norms.token_types]).
        name: Model name for the report.

    Raises:
        ValueError: For an unsupported model without ``image_token_id``, a batch larger than 1,
            or fewer ``type_overrides`` than inputs.
    """
    if image_token_id is None:
        from attrib.models.adapters import adapter_for

        image_token_id = adapter_for(model).image_token_id(model)
    pool = _Pool()
    for i, x in enumerate(inputs):
        if x["input_ids"].shape[0] != 1:
            raise ValueError(f"measure_norms takes batch-1 inputs, got batch {x['input_ids'].shape[0]}")
        if type_overrides is not None and i >= len(type_overrides):
            raise ValueError(f"type_overrides has {len(type_overrides)} entries, fewer than the inputs")
        out = model(**x, output_hidden_states=True, use_cache=False)
        if getattr(out, "hidden_states", None) is None:
            raise ValueError(f"{type(model).__name__} returned no hidden states")
        ov = type_overrides[i] if type_overrides is not None else None
        pool.add(out.hidden_states, token_types(x["input_ids"], image_token_id, ov))
    return pool.report(name or type(model).__name__)


def model_norms(loaded: LoadedModel, items: Sequence[tuple[Any, str, str | None]], *, name: str = "") -> NormReport:
    """Layer-wise norms by token type of a loaded model, through its variant.

    A variant with its own traces (latent tokens) measures along them; any other
    model is measured on each item's prompt with its reference answer
    teacher-forced when one is given.

    Args:
        loaded: From [`attrib.models.load`][attrib.models.loading.load].
        items: ``(image, question, reference or None)`` per input.
        name: Model name for the report.
    """
    from attrib.variants.registry import get_variant

    states = get_variant(loaded.variant).norm_states(loaded, items)
    if states is not None:
        hs, types = [], []
        for h, t in states:
            hs.append(h)
            types.append(t)
        return norm_report(hs, types, model=name or loaded.name)
    hf = loaded.hf_model
    inputs = (loaded.build(im, q, ref) for im, q, ref in items)
    return measure_norms(hf, inputs, name=name or loaded.name)
