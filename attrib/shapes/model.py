"""The bundled thinking VLM: a small ``Qwen2_5_VLForConditionalGeneration`` trained on ``attrib.shapes``."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from attrib.shapes.processor import ShapesProcessor

__all__ = [
    "BUNDLED",
    "BUNDLED_DIR",
    "ModelSize",
    "build_config",
    "bundled_model_path",
    "load_model",
    "model_benchmark",
]

logger = logging.getLogger(__name__)

#: Where the bundled models live inside the package.
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
#: The bundled models' names (each a directory of [`BUNDLED_DIR`][attrib.shapes.model.BUNDLED_DIR]).
BUNDLED: tuple[str, ...] = ("shapes-qwen25vl", "shapes-qwen25vl-v1", "shapes2-qwen25vl")


@dataclass(frozen=True, kw_only=True)
class ModelSize:
    """Architecture hyper-parameters of a small Qwen2.5-VL.

    The defaults are the bundled model's. ``head_dim = hidden / heads`` must be
    divisible by 2, and M-RoPE sections are derived to sum to ``head_dim / 2``.
    ``rope_theta`` is the language model's rotary base.
    """

    hidden: int = 192
    layers: int = 4
    heads: int = 6
    kv_heads: int = 2
    intermediate: int = 512
    vision_hidden: int = 128
    vision_depth: int = 4
    vision_heads: int = 4
    vision_intermediate: int = 256
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.hidden % self.heads or (self.hidden // self.heads) % 2:
            raise ValueError(f"hidden={self.hidden} must split into {self.heads} heads of even size")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads={self.heads} must be a multiple of kv_heads={self.kv_heads}")
        if self.vision_hidden % self.vision_heads:
            raise ValueError(f"vision_hidden={self.vision_hidden} must split into {self.vision_heads} heads")

    @classmethod
    def tiny(cls) -> ModelSize:
        """A size for smoke tests (seconds per step)."""
        return cls(
            hidden=64,
            layers=2,
            heads=4,
            kv_heads=2,
            intermediate=128,
            vision_hidden=32,
            vision_depth=2,
            vision_heads=2,
            vision_intermediate=64,
        )

    @classmethod
    def v2(cls) -> ModelSize:
        """The v2 model: 6 language-model layers x 8 query heads (48 (layer, head) pairs), otherwise v1's widths.

        Its rotary base is 100 instead of 10,000: with head dimension 24 the M-RoPE width section gets the
        lowest frequencies, which at 10,000 turn by under 0.005 rad per image column. At 100 the lowest
        frequency (0.015 rad per position) still spans every text position of a v2 prompt and trace without
        wrapping. Measured on 800-step probes (224x224 only): training loss 0.387 vs 0.401, first position
        word right under teacher forcing 0.756 vs 0.730.
        """
        return cls(hidden=192, layers=6, heads=8, kv_heads=2, intermediate=512, rope_theta=100.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _mrope_sections(head_dim: int) -> list[int]:
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def build_config(processor: ShapesProcessor, size: ModelSize | None = None) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config whose vocabulary and special ids match ``processor``.

    Args:
        processor: The local processor (vocabulary and special-token ids).
        size: Architecture; [`ModelSize`][attrib.shapes.model.ModelSize] defaults when ``None``.
    """
    s = size or ModelSize()
    head_dim = s.hidden // s.heads
    ids = processor.config_kwargs()
    vocab = len(processor.tokenizer)
    text = {
        "vocab_size": vocab,
        "hidden_size": s.hidden,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "intermediate_size": s.intermediate,
        "max_position_embeddings": 4096,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": float(s.rope_theta),
            "mrope_section": _mrope_sections(head_dim),
        },
        "tie_word_embeddings": True,
        "pad_token_id": ids["pad_token_id"],
        "eos_token_id": ids["eos_token_id"],
        "bos_token_id": ids["bos_token_id"],
    }
    vision = {
        "depth": s.vision_depth,
        "hidden_size": s.vision_hidden,
        "intermediate_size": s.vision_intermediate,
        "num_heads": s.vision_heads,
        "out_hidden_size": s.hidden,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [i for i in range(s.vision_depth) if i % 2 == 1],
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["image_token_id"],
        video_token_id=ids["video_token_id"],
        vision_start_token_id=ids["vision_start_token_id"],
        vision_end_token_id=ids["vision_end_token_id"],
        tie_word_embeddings=True,
    )


def load_model(
    path: str | Path, *, dtype: torch.dtype = torch.float32
) -> tuple[Qwen2_5_VLForConditionalGeneration, ShapesProcessor]:
    """Load a plain model directory written by ``attrib shapes train`` (local only, no hub).

    A thin, typed wrapper of [`attrib.models.load`][attrib.models.loading.load] for the benchmark's own
    training and evaluation code, which needs the plain model and its processor.

    Args:
        path: Directory with ``config.json``, ``model.safetensors`` and processor files.
        dtype: Parameter dtype.

    Returns:
        ``(model, processor)`` with the model in eval mode (SDPA attention).

    Raises:
        FileNotFoundError: If the directory or a required file is missing.
        ValueError: If it holds a research variant, a file is corrupt, or the model and processor disagree.
    """
    from attrib.models.loading import detect_model_kind, load

    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"model directory not found: {p}")
    kind = detect_model_kind(p)
    if kind is not None:
        raise ValueError(f"{p} is a {kind.description}, not a plain model; load it with attrib.load")
    for name in ("config.json", "model.safetensors"):
        if not (p / name).is_file():
            raise FileNotFoundError(f"model directory {p} lacks {name}")
    try:
        json.loads((p / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt config.json in {p}: {e}") from e
    if not (p / "attrib_processor.json").is_file():
        raise ValueError(f"{p} was not written by `attrib shapes train` (no attrib_processor.json)")
    loaded = load(p, dtype=dtype)
    if not isinstance(loaded.processor, ShapesProcessor):
        raise ValueError(f"{p} does not use the benchmark's processor")
    return loaded.model, loaded.processor


def model_benchmark(path: str | Path) -> str:
    """The benchmark a model directory was made for: ``"shapes"`` (v1) or ``"shapes2"`` (v2).

    The first of these that names one decides: the training config in ``train_log.json`` (models of
    ``attrib shapes train``, point-and-copy ones included), the one in ``latent_train_log.json`` (latent
    variants of ``attrib latent train``), and the dataset ``attrib_processor.json`` records
    (``"shapes2:test"``). A directory where none does is a benchmark-v1 model (made before v2 existed).

    Args:
        path: A model directory.

    Returns:
        ``"shapes"`` or ``"shapes2"``.
    """
    p = Path(path)
    known = ("shapes", "shapes2")
    for name in ("train_log.json", "latent_train_log.json"):
        try:
            config = json.loads((p / name).read_text()).get("config")
        except (OSError, ValueError, AttributeError):
            continue
        bench = config.get("benchmark") if isinstance(config, dict) else None
        if bench in known:
            return str(bench)
    try:
        spec = json.loads((p / "attrib_processor.json").read_text()).get("dataset")
    except (OSError, ValueError, AttributeError):
        spec = None
    if isinstance(spec, str) and spec.split(":", 1)[0] in known:
        return spec.split(":", 1)[0]
    return "shapes"


def bundled_model_path(name: str = "shapes2-qwen25vl") -> Path:
    """Path of a bundled model.

    Raises:
        ValueError: For an unknown name (the message lists the bundled ones).
        FileNotFoundError: If the bundled files are absent from this install.
    """
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled model {name!r}; bundled: {sorted(BUNDLED)}")
    p = BUNDLED_DIR / name
    if not ((p / "model.safetensors").is_file() or (p / "base" / "model.safetensors").is_file()):
        how = (
            "attrib shapes train"
            + (" --benchmark shapes2" if name.startswith("shapes2") else "")
            + (" --variant v1" if name.endswith("-v1") else "")
            + f" --out {p}"
        )
        raise FileNotFoundError(f"bundled model files missing at {p}; reinstall attrib or run `{how}`")
    return p
