"""The collection format: one directory of atomic shards and a manifest, read back without unpickling.

Storage (one directory per collection):

- ``manifest.json``: the collection's identity (model, dataset, settings; a
  resume with different ones is refused), the shards written, and per-example
  failures with their reasons.
- ``shard-00000.safetensors``: arrays, memory-mappable with ``safetensors.safe_open``:
  ``features`` ``(n_spans, K, L, H)`` float32, ``span_offsets`` ``(n_examples + 1,)``,
  ``subsets`` ``(n_examples, M, K)`` uint8 (1 = removed), ``subset_deltas``
  ``(n_spans, M)``, ``loo_deltas`` ``(n_spans, K)`` (when leave-one-out ran), ``all_deltas``
  ``(n_spans,)`` (the drop when every region is removed; collections made before it lack it),
  ``regions_{i}`` per example ``(H, W)`` int16 label maps, and for a variant with alias key
  parts ``part.{name}`` ``(n_spans, K, L, H)`` (v1: ``part.via_copy``, the part of ``features``
  that reached the regions through copy tokens; the direct part is ``features`` minus it).
- ``shard-00000.json``: per example: uid, question, answer, output, correctness,
  spans (text and token range), the ground-truth regions each span names (where
  the dataset knows them), each span's kind and the regions of the one object it names by its
  description (``span_kinds``, ``span_object_regions``, where the dataset tells) and what the
  model's variant records (v1: copy sources).

Why safetensors + JSON: no pickle anywhere, zero-copy memory mapping, one
self-describing file per shard, and nothing beyond the libraries the package
already needs (Arrow would add a dependency for no gain at these sizes).

Every shard is written to a temporary name and renamed, then the manifest is
rewritten the same way; a kill at any moment leaves either a complete shard
listed in the manifest, or nothing. A rerun skips the listed shards and redoes
the rest, so nothing is lost or duplicated.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attrib.io import atomic_write_json

__all__ = ["FORMAT_VERSION", "Collection", "check_writable", "identity_hash", "open_manifest", "write_shard"]

FORMAT_VERSION = 1


@dataclass
class Collection:
    """A collected dataset opened for reading.

    Attributes:
        path: The collection directory.
        manifest: The parsed manifest.
    """

    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | Path) -> Collection:
        """Open a collection directory.

        Raises:
            FileNotFoundError: If there is no manifest.
        """
        p = Path(path)
        mf = p / "manifest.json"
        if not mf.is_file():
            raise FileNotFoundError(f"no collection at {p} (manifest.json missing)")
        return cls(p, json.loads(mf.read_text()))

    @property
    def config(self) -> dict[str, Any]:
        """The settings the collection was made with (``model``, ``dataset``, ``k``, ...)."""
        return dict(self.manifest.get("config", {}))

    def shards(self) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
        """``(arrays, records)`` for every shard, in order."""
        from safetensors.numpy import load_file

        out = []
        for s in self.manifest["shards"]:
            arrays = load_file(str(self.path / f"{s['name']}.safetensors"))
            recs = json.loads((self.path / f"{s['name']}.json").read_text())
            out.append((arrays, recs))
        return out

    def examples(self) -> Iterator[dict[str, Any]]:
        """Per example: its record plus ``features``, ``subsets``, ``subset_deltas``, ``loo_deltas``,
        ``all_deltas`` (where stored), ``regions``.

        Collections of a variant with alias key parts (v1: ``via_copy``) also give ``parts``:
        per part, the ``(n_spans, K, L, H)`` share of ``features`` that reached the regions through it.
        """
        for arrays, recs in self.shards():
            off = arrays["span_offsets"]
            parts = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("part.")}
            for i, rec in enumerate(recs["examples"]):
                a, b = int(off[i]), int(off[i + 1])
                ex = dict(rec)
                ex["features"] = arrays["features"][a:b]
                ex["subsets"] = arrays["subsets"][i].astype(bool)
                ex["subset_deltas"] = arrays["subset_deltas"][a:b]
                if "loo_deltas" in arrays:
                    ex["loo_deltas"] = arrays["loo_deltas"][a:b]
                if "all_deltas" in arrays:
                    ex["all_deltas"] = arrays["all_deltas"][a:b]
                ex["regions"] = arrays[f"regions_{i}"]
                if parts:
                    ex["parts"] = {n: p[a:b] for n, p in parts.items()}
                yield ex

    @property
    def failures(self) -> list[dict[str, str]]:
        """Examples that failed, with reasons."""
        return list(self.manifest.get("failures", []))


def identity_hash(identity: dict[str, Any], model_files: dict[str, Any]) -> str:
    """The hash a resume must match: the collection's settings and its model's fingerprint."""
    blob = json.dumps({"config": identity, "model": model_files}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_writable(out: Path) -> None:
    """Create ``out`` and prove it writable before any work.

    Raises:
        OSError: Naming the directory.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise OSError(f"output directory {out} is not writable: {e.strerror or e}") from e


def open_manifest(identity: dict[str, Any], out: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The manifest of the collection in ``out``: read (a resume) or created.

    Raises:
        ValueError: If ``out`` holds a collection with another identity.
    """
    ident = identity_hash(identity, fingerprint)
    mf_path = out / "manifest.json"
    if mf_path.is_file():
        manifest: dict[str, Any] = json.loads(mf_path.read_text())
        if manifest.get("identity") != ident:
            raise ValueError(
                f"{out} holds a collection of another dataset/model/settings "
                f"(manifest config {manifest.get('config')}); use a new directory"
            )
        return manifest
    manifest = {
        "version": FORMAT_VERSION,
        "identity": ident,
        "config": identity,
        "model_fingerprint": fingerprint,
        "shards": [],
        "failures": [],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_json(mf_path, manifest)
    return manifest


def write_shard(out: Path, name: str, arrays: dict[str, np.ndarray], recs: list[dict[str, Any]]) -> None:
    """Write one shard's arrays and records atomically (arrays first, then records).

    Raises:
        OSError: Naming the shard and the directory; no partial file is left.
    """
    from safetensors.numpy import save_file

    tmp = out / f".{name}.safetensors.tmp"
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
        os.replace(tmp, out / f"{name}.safetensors")
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(f"could not write shard {name} to {out}: {e.strerror or e}") from e
    atomic_write_json(out / f"{name}.json", {"examples": recs})
