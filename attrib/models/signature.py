"""Model signatures: what an estimator or a collection records about the model it was made with.

[`model_signature`][attrib.models.signature.model_signature] fingerprints a model
cheaply and stably: the class, L x H, a hash of the config, and a hash of the
checkpoint's weight files as they sit on disk (names, sizes, safetensors headers
and a few sampled blocks of each file), so it does not depend on the dtype or
device the model was loaded with, and costs a few reads, not a copy of the
weights. A model without a checkpoint directory (a hub id, a model built in
memory) is hashed from a sample of its embedding rows instead. Streaming
refuses an estimator whose recorded signature names another model.

[`weights_fingerprint`][attrib.models.signature.weights_fingerprint] identifies a
checkpoint *directory* (path and weight-file sizes) for a collection's identity.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from attrib.models.adapters import adapter_for

__all__ = [
    "SIGNATURE_VERSION",
    "embeddings_signature",
    "model_signature",
    "same_model",
    "weight_files",
    "weights_fingerprint",
]

#: Version of the signature's definition (1: a hash of the whole embedding matrix, before 0.2).
SIGNATURE_VERSION = 2
_SAMPLES = 16  # blocks read per weight file
_BLOCK = 4096


def _inner(model: Any) -> Any:
    """The transformers model inside a research-variant wrapper (which exposes it as ``base``)."""
    base = getattr(model, "base", None)
    return base if base is not None and hasattr(base, "config") else model


_CONFIG_NOISE = ("transformers_version", "torch_dtype", "dtype", "architectures", "name_or_path")


def _clean_config(d: Any) -> Any:
    """The config without what the load itself sets (dtypes, versions, names), at every level."""
    if isinstance(d, dict):
        return {k: _clean_config(v) for k, v in d.items() if not str(k).startswith("_") and k not in _CONFIG_NOISE}
    return d


def _config_sha(model: Any) -> str:
    cfg = _clean_config(model.config.to_dict())
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weight_files(path: str | Path) -> list[Path]:
    """The weight files of a checkpoint directory: ``model.safetensors`` or its shards (``base/`` for variants).

    Raises:
        ValueError: For a corrupt shard index.
    """
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


def _file_digest(digest: Any, f: Path) -> None:
    """Name, size, safetensors header and sampled blocks of one file."""
    size = f.stat().st_size
    digest.update(f"{f.name}:{size}".encode())
    with f.open("rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        if 0 < n < size:
            digest.update(fh.read(n))
        start = 8 + n if 0 < n < size else 0
        span = max(1, size - start - _BLOCK)
        for i in range(_SAMPLES):
            fh.seek(start + span * i // max(1, _SAMPLES - 1))
            digest.update(fh.read(_BLOCK))


def _sampled_rows_digest(model: Any, digest: Any) -> None:
    """A deterministic sample of embedding rows and every tensor a variant adds (no checkpoint on disk)."""
    emb = model.get_input_embeddings().weight.detach()
    step = max(1, emb.shape[0] // 64)
    digest.update(emb[::step].float().cpu().numpy().tobytes())
    if _inner(model) is not model:
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if not name.startswith("base."):
                digest.update(name.encode() + t.detach().float().cpu().numpy().tobytes())


def model_signature(model: Any, path: str | Path | None = None) -> dict[str, Any]:
    """A cheap, stable fingerprint of a model: class, L x H, a hash of its config and of its weights.

    Args:
        model: The loaded model (a research-variant wrapper included).
        path: Its checkpoint directory; its weight files are hashed (headers and sampled
            blocks), so the signature is the same whatever dtype or device the model was
            loaded with. Without one, a sample of the embedding rows is hashed.

    Returns:
        ``{"version", "class", "L", "H", "config_sha", "weights_sha"}``.
    """
    digest = hashlib.sha256()
    files = weight_files(path) if path is not None and Path(path).is_dir() else []
    if files:
        extra = getattr(model, "WEIGHTS_FILE", None)
        if extra and (Path(path) / extra).is_file():  # type: ignore[arg-type]
            files = [*files, Path(path) / extra]  # type: ignore[arg-type]
        for f in files:
            _file_digest(digest, f)
    else:
        _sampled_rows_digest(model, digest)
    inner = _inner(model)
    n_layers, n_heads, _ = adapter_for(inner).dims(inner)
    return {
        "version": SIGNATURE_VERSION,
        "class": type(model).__name__,
        "L": n_layers,
        "H": n_heads,
        "config_sha": _config_sha(model),
        "weights_sha": digest.hexdigest()[:16],
    }


def embeddings_signature(model: Any) -> dict[str, Any]:
    """The version-1 signature (a hash of the whole embedding matrix), to check estimators recorded with it."""
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
    n_layers, n_heads, _ = adapter_for(inner).dims(inner)
    return {
        "class": type(model).__name__,
        "L": n_layers,
        "H": n_heads,
        "config_sha": _config_sha(model),
        "embeddings_sha": digest.hexdigest()[:16],
    }


def same_model(recorded: dict[str, Any], model: Any, path: str | Path | None = None) -> list[str]:
    """The fields in which a recorded signature differs from ``model``'s (empty: the same model).

    A version-1 signature (with ``embeddings_sha``) is checked with the version-1 definition.
    """
    if "embeddings_sha" in recorded and "weights_sha" not in recorded:
        mine = embeddings_signature(model)
        keys = ("class", "config_sha", "embeddings_sha")
    else:
        mine = model_signature(model, path)
        keys = ("class", "config_sha", "weights_sha")
    return [k for k in keys if recorded.get(k) != mine.get(k)]


def weights_fingerprint(path: str | Path) -> dict[str, Any]:
    """``{"path", "weights_bytes"}`` of a checkpoint directory (or ``{"path": hub_id}`` for a hub id)."""
    p = Path(path)
    if not p.is_dir():
        return {"path": str(path)}
    files = weight_files(p)
    return {"path": str(p.resolve()), "weights_bytes": int(sum(f.stat().st_size for f in files if f.is_file()))}
