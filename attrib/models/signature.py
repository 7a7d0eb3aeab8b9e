"""Model signatures: what an estimator or a collection records about the model it was made with.

[`model_signature`][attrib.models.signature.model_signature] fingerprints a *loaded* model (class, L x H, a hash of
its config and of its input embeddings, and of any parameters a research
variant adds around its base model); streaming refuses an estimator fit on
another model. [`weights_fingerprint`][attrib.models.signature.weights_fingerprint] identifies a checkpoint *directory*
cheaply (path and weight-file sizes) for a collection's identity.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from attrib.models.adapters import adapter_for

__all__ = ["model_signature", "weight_files", "weights_fingerprint"]


def _inner(model: Any) -> Any:
    """The transformers model inside a research-variant wrapper (which exposes it as ``base``)."""
    base = getattr(model, "base", None)
    return base if base is not None and hasattr(base, "config") else model


def model_signature(model: Any) -> dict[str, Any]:
    """A fingerprint of a loaded model: class, L x H, a hash of its config and of its input embeddings.

    For a research-variant wrapper (a module holding its transformers model as
    ``base``), the parameters and buffers it adds outside ``base`` are hashed too.
    """
    cfg = {k: v for k, v in model.config.to_dict().items() if not k.startswith("_")}
    for key in ("transformers_version", "torch_dtype", "dtype", "architectures", "name_or_path"):
        cfg.pop(key, None)
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
    emb = model.get_input_embeddings().weight.detach()
    digest = hashlib.sha256(emb.float().cpu().numpy().tobytes())
    inner = _inner(model)
    if inner is not model:
        for name, param in model.named_parameters():
            if not name.startswith("base."):
                digest.update(param.detach().float().cpu().numpy().tobytes())
        for name, buf in model.named_buffers():
            if not name.startswith("base."):
                digest.update(buf.detach().float().cpu().numpy().tobytes())
    e = digest.hexdigest()[:16]
    n_layers, n_heads, _ = adapter_for(inner).dims(inner)
    return {"class": type(model).__name__, "L": n_layers, "H": n_heads, "config_sha": h, "embeddings_sha": e}


def weight_files(path: str | Path) -> list[Path]:
    """The weight files of a checkpoint directory: ``model.safetensors`` or its shards (``base/`` for variants)."""
    p = Path(path)
    for d in (p, p / "base"):
        single = d / "model.safetensors"
        if single.is_file():
            return [single]
        index = d / "model.safetensors.index.json"
        if index.is_file():
            try:
                names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"corrupt shard index {index}: {e}") from e
            return [d / n for n in names]
    return []


def weights_fingerprint(path: str | Path) -> dict[str, Any]:
    """``{"path", "weights_bytes"}`` of a checkpoint directory (or ``{"path": hub_id}`` for a hub id)."""
    p = Path(path)
    if not p.is_dir():
        return {"path": str(path)}
    files = weight_files(p)
    return {"path": str(p.resolve()), "weights_bytes": int(sum(f.stat().st_size for f in files if f.is_file()))}
