"""``attrib collect``: generate, capture, cut regions and compute causal targets, into resumable shards.

Storage (one directory per collection):

- ``manifest.json``: the collection's identity (model, dataset, settings; a
  resume with different ones is refused), the shards written, and per-example
  failures with their reasons.
- ``shard-00000.safetensors``: arrays, memory-mappable with ``safetensors.safe_open``:
  ``features`` ``(n_spans, K, L, H)`` float32, ``span_offsets`` ``(n_examples + 1,)``,
  ``subsets`` ``(n_examples, M, K)`` uint8 (1 = removed), ``subset_deltas``
  ``(n_spans, M)``, ``loo_deltas`` ``(n_spans, K)`` (when leave-one-out ran),
  ``regions_{i}`` per example ``(H, W)`` int16 label maps.
- ``shard-00000.json``: per example: uid, question, answer, output, correctness,
  spans (text and token range), and the ground-truth objects each span names
  (benchmark only), as region ids.

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
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from attrib.ablation import AblationRunner, loo_subsets, random_subsets
from attrib.capture import capture_generate
from attrib.io import atomic_write_json
from attrib.pointcopy import PointCopyModel
from attrib.pointcopy_attribution import PointCopyAblation, capture_pointcopy
from attrib.processing import load_image
from attrib.regions import segment
from attrib.shapes.pointing import strip_pointing

__all__ = ["CollectConfig", "CollectItem", "Collection", "collect", "collect_many", "iter_items"]

logger = logging.getLogger(__name__)
FORMAT_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class CollectConfig:
    """Settings of a collection (all part of its identity).

    Attributes:
        model: Bundled model name or local model directory.
        dataset: ``"shapes:<split>"`` or a JSONL path (``image``, ``question``, optional ``answer``).
        n: Examples to take (``shapes``) or the first ``n`` lines (JSONL; 0 = all).
        start: First example index.
        k: Regions per image.
        region_method: Region method (see :mod:`attrib.regions`).
        ablation_mode: ``mask``, ``mean`` or ``repaint``.
        n_subsets: Random removal sets per example (each region removed with p = 0.5).
        loo: Also compute leave-one-out targets.
        seed: Seed of the removal sets (mixed with the example index).
        shard_size: Examples per shard.
        max_new_tokens: Generation budget.
        batch_size: Removal sets per ablation forward.
    """

    model: str = "shapes-qwen25vl"
    dataset: str = "shapes:train"
    n: int = 100
    start: int = 0
    k: int = 32
    region_method: str = "color"
    ablation_mode: str = "mask"
    n_subsets: int = 32
    loo: bool = False
    seed: int = 0
    shard_size: int = 16
    max_new_tokens: int = 200
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.shard_size < 1 or self.n < 0 or self.k < 1 or self.n_subsets < 1:
            raise ValueError("shard_size, k and n_subsets must be >= 1 and n >= 0")

    def identity(self) -> dict[str, Any]:
        """What a resume must match (everything but the batch size, which does not change results)."""
        d = asdict(self)
        d.pop("batch_size")
        return d


@dataclass
class CollectItem:
    """One input example."""

    uid: str
    question: str
    answer: str | None
    image_path: str | None = None
    image: Image.Image | None = None
    gt_sentences: list[tuple[str, list[int]]] | None = None
    object_masks: list[np.ndarray] | None = None


def iter_items(cfg: CollectConfig) -> Iterator[CollectItem]:
    """The collection's examples, in order.

    Raises:
        ValueError: For an unknown dataset spec.
        FileNotFoundError: For a missing JSONL file.
    """
    if cfg.dataset.startswith("shapes:"):
        from attrib.shapes import iter_split

        split = cfg.dataset.split(":", 1)[1]
        for ex in iter_split(split, cfg.n, start=cfg.start):
            yield CollectItem(
                uid=ex.uid,
                question=ex.question.text,
                answer=ex.answer,
                image=ex.image(),
                gt_sentences=[(s.text, list(s.objects)) for s in ex.question.sentences],
                object_masks=[ex.scene.mask(i) for i in range(len(ex.scene.objects))],
            )
        return
    path = Path(cfg.dataset)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path} (or use shapes:<split>)")
    with path.open() as f:
        for i, line in enumerate(f):
            if i < cfg.start:
                continue
            if cfg.n and i >= cfg.start + cfg.n:
                break
            if not line.strip():
                continue
            rec = json.loads(line)
            img = str(path.parent / rec["image"])
            yield CollectItem(
                uid=str(rec.get("id", i)), question=rec["question"], answer=rec.get("answer"), image_path=img
            )


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
        """Per example: its record plus ``features``, ``subsets``, ``subset_deltas``, ``loo_deltas``, ``regions``."""
        for arrays, recs in self.shards():
            off = arrays["span_offsets"]
            for i, rec in enumerate(recs["examples"]):
                a, b = int(off[i]), int(off[i + 1])
                ex = dict(rec)
                ex["features"] = arrays["features"][a:b]
                ex["subsets"] = arrays["subsets"][i].astype(bool)
                ex["subset_deltas"] = arrays["subset_deltas"][a:b]
                if "loo_deltas" in arrays:
                    ex["loo_deltas"] = arrays["loo_deltas"][a:b]
                ex["regions"] = arrays[f"regions_{i}"]
                yield ex

    @property
    def failures(self) -> list[dict[str, str]]:
        """Examples that failed, with reasons."""
        return list(self.manifest.get("failures", []))


def _identity_hash(cfg: CollectConfig, model_files: dict[str, Any]) -> str:
    blob = json.dumps({"config": cfg.identity(), "model": model_files}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _model_fingerprint(path: Path) -> dict[str, Any]:
    weights = path / "model.safetensors"
    if not weights.is_file() and (path / "base" / "model.safetensors").is_file():  # v1 point-and-copy layout
        weights = path / "base" / "model.safetensors"
    st = weights.stat()
    return {"path": str(path.resolve()), "weights_bytes": st.st_size}


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise OSError(f"output directory {out} is not writable: {e.strerror or e}") from e


def collect(
    cfg: CollectConfig,
    out_dir: str | Path,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    threads: int | None = None,
) -> Collection:
    """Run (or resume) a collection into ``out_dir``.

    Args:
        cfg: Settings.
        out_dir: Output directory; an existing collection there is resumed.
        on_progress: Called as ``on_progress(done_examples, total_examples)``.
        threads: torch CPU threads.

    Returns:
        The finished :class:`Collection`.

    Raises:
        ValueError: If ``out_dir`` holds a collection with a different identity.
        OSError: If ``out_dir`` is not writable (a clear message; no shard is left half-written).
    """
    return collect_many([cfg], [out_dir], on_progress=on_progress, threads=threads)[0]


def collect_many(
    cfgs: Sequence[CollectConfig],
    out_dirs: Sequence[str | Path],
    *,
    on_progress: Callable[[int, int], None] | None = None,
    threads: int | None = None,
) -> list[Collection]:
    """Several collections that differ only in their regions, from one generation per example.

    Greedy generation does not depend on the regions, and capture is linear in
    the region -> token assignment, so every configuration's partition is
    stacked into one assignment and captured in the same ``generate`` call; the
    ablation targets are then computed per configuration. Each output directory
    is an ordinary collection, the same as :func:`collect` would write for its
    configuration (features agree to float rounding), and each resumes
    independently.

    Args:
        cfgs: Settings; they must agree on everything except ``region_method`` and ``k``.
        out_dirs: One output directory per configuration.
        on_progress: Called as ``on_progress(done_examples, total_examples)``.
        threads: torch CPU threads.

    Returns:
        The finished collections, in the order of ``cfgs``.

    Raises:
        ValueError: If the configurations differ in more than their regions, or an
            output directory holds a collection with a different identity.
        OSError: If an output directory is not writable.
    """
    from attrib.shapes.model import load_any, resolve_model

    check_configs(cfgs, out_dirs, "collect_many")
    base = cfgs[0]
    if threads:
        torch.set_num_threads(threads)
    outs = [Path(o) for o in out_dirs]
    for o in outs:
        _check_writable(o)
    model_path = resolve_model(base.model)
    fingerprint = _model_fingerprint(model_path)
    items = list(iter_items(base))  # a bad dataset fails here, before anything is written
    manifests = [_open_manifest(c, o, fingerprint) for c, o in zip(cfgs, outs, strict=True)]
    model, proc = load_any(model_path)
    from attrib.streaming import model_signature

    sig = model_signature(model)
    for m, o in zip(manifests, outs, strict=True):
        if m.get("model_signature") != sig:
            m["model_signature"] = sig
            atomic_write_json(o / "manifest.json", m)
    total = len(items)
    n_shards = (total + base.shard_size - 1) // base.shard_size
    done_names = [{s["name"] for s in m["shards"]} for m in manifests]
    done = sum(s["n_examples"] + s["n_failed"] for s in manifests[0]["shards"])
    if on_progress:
        on_progress(done, total)
    for si in range(n_shards):
        name = f"shard-{si:05d}"
        todo = [i for i in range(len(cfgs)) if name not in done_names[i]]
        if not todo:
            continue
        chunk = items[si * base.shard_size : (si + 1) * base.shard_size]
        results = _collect_chunk([cfgs[i] for i in todo], model, proc, chunk, si, on_progress, done, total)
        done += len(chunk)
        for i, (arrays, recs, failures) in zip(todo, results, strict=True):
            _write_shard(outs[i], name, arrays, recs)
            manifests[i]["shards"].append({"name": name, "n_examples": len(recs), "n_failed": len(failures)})
            manifests[i]["failures"].extend(failures)
            atomic_write_json(outs[i] / "manifest.json", manifests[i])
    out = []
    for m, o in zip(manifests, outs, strict=True):
        m["complete"] = True
        atomic_write_json(o / "manifest.json", m)
        out.append(Collection.open(o))
    return out


def check_configs(cfgs: Sequence[CollectConfig], out_dirs: Sequence[str | Path], who: str) -> None:
    """Refuse configurations that differ in more than their regions, or outputs that are not one per config.

    Raises:
        ValueError: Naming ``who`` (the caller) and the problem.
    """
    if len(cfgs) != len(out_dirs) or not cfgs:
        raise ValueError(f"need one output directory per configuration, got {len(cfgs)} and {len(out_dirs)}")
    base = cfgs[0]
    for c in cfgs[1:]:
        if replace(c, region_method=base.region_method, k=base.k) != base:
            raise ValueError(f"{who}: configurations may differ only in region_method and k")
    if len({str(Path(o).resolve()) for o in out_dirs}) != len(out_dirs):
        raise ValueError(f"{who}: output directories must be distinct")


def _open_manifest(cfg: CollectConfig, out: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    ident = _identity_hash(cfg, fingerprint)
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
        "config": cfg.identity(),
        "model_fingerprint": fingerprint,
        "shards": [],
        "failures": [],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_json(mf_path, manifest)
    return manifest


def _collect_chunk(
    cfgs: list[CollectConfig],
    model: Any,
    proc: Any,
    chunk: list[CollectItem],
    shard_index: int,
    on_progress: Callable[[int, int], None] | None,
    done: int,
    total: int,
) -> list[tuple[dict[str, np.ndarray], list[dict[str, Any]], list[dict[str, str]]]]:
    per: list[list[dict[str, Any]]] = [[] for _ in cfgs]
    failures: list[list[dict[str, str]]] = [[] for _ in cfgs]
    for j, item in enumerate(chunk):
        index = shard_index * cfgs[0].shard_size + j
        try:
            rs: list[dict[str, Any] | Exception] = list(_one_many(cfgs, model, proc, item, index))
        except (ValueError, OSError) as e:
            rs = [e] * len(cfgs)
        for c, r in enumerate(rs):
            if isinstance(r, Exception):
                failures[c].append({"uid": item.uid, "reason": f"{type(r).__name__}: {r}"})
                logger.warning("example %s failed: %s", item.uid, r)
            else:
                per[c].append(r)
        if on_progress:
            on_progress(done + j + 1, total)
    return [_shard_arrays(cfg, rs, fs) for cfg, rs, fs in zip(cfgs, per, failures, strict=True)]


def _shard_arrays(
    cfg: CollectConfig, results: list[dict[str, Any]], failures: list[dict[str, str]]
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]], list[dict[str, str]]]:
    k = cfg.k
    offsets = np.cumsum([0] + [r["features"].shape[0] for r in results]).astype(np.int64)
    arrays: dict[str, np.ndarray] = {
        "features": np.concatenate([r["features"] for r in results]).astype(np.float32)
        if results
        else np.zeros((0, k, 1, 1), np.float32),
        "span_offsets": offsets,
        "subsets": np.stack([r["subsets"] for r in results]).astype(np.uint8)
        if results
        else np.zeros((0, cfg.n_subsets, k), np.uint8),
        "subset_deltas": np.concatenate([r["subset_deltas"] for r in results]).astype(np.float32)
        if results
        else np.zeros((0, cfg.n_subsets), np.float32),
    }
    if cfg.loo:
        arrays["loo_deltas"] = (
            np.concatenate([r["loo_deltas"] for r in results]).astype(np.float32)
            if results
            else np.zeros((0, k), np.float32)
        )
    for i, r in enumerate(results):
        arrays[f"regions_{i}"] = r["regions"].astype(np.int16)
    return arrays, [r["record"] for r in results], failures


def _one(cfg: CollectConfig, model: Any, proc: Any, item: CollectItem, index: int) -> dict[str, Any]:
    r = _one_many([cfg], model, proc, item, index)[0]
    if isinstance(r, Exception):
        raise r
    return r


def _one_many(
    cfgs: list[CollectConfig], model: Any, proc: Any, item: CollectItem, index: int
) -> list[dict[str, Any] | Exception]:
    """One generation, then per configuration: features, targets and the record (or the error)."""
    from attrib.shapes.parse import parse_output

    base = cfgs[0]
    image = item.image if item.image is not None else load_image(str(item.image_path))
    x = proc([image], [item.question])
    grid = proc.grid_spec()
    parts, assigns = [], []
    for cfg in cfgs:
        part = segment(image, cfg.k, method=cfg.region_method, seed=cfg.seed + index)
        if part.k != cfg.k:
            raise ValueError(f"region method {cfg.region_method} gave K={part.k}, expected {cfg.k}")
        parts.append(part)
        assigns.append(part.assign_tokens(grid))
    stacked = np.concatenate([a.matrix for a in assigns]) if len(assigns) > 1 else assigns[0]
    pointcopy = isinstance(model, PointCopyModel)
    copy_sources: list[int] = []
    if pointcopy:
        res, gen = capture_pointcopy(
            model,
            x,
            stacked,
            decode=lambda ids: proc.tokenizer.decode(ids),
            max_new_tokens=base.max_new_tokens,
            eos_token_id=int(proc.tokenizer.eos_token_id),
        )
        copy_sources = gen.generated(0)[1]
    else:
        res = capture_generate(
            model,
            x,
            stacked,
            decode=lambda ids: proc.tokenizer.decode(ids),
            max_new_tokens=base.max_new_tokens,
            do_sample=False,
        )
    if not res.spans:
        raise ValueError("the generated trace has no complete span")
    spans = [(s.start, s.end) for s in res.spans]
    text = proc.decode(res.generated_ids)
    parsed = parse_output(strip_pointing(text))
    correct = None if item.answer is None else bool(parsed.ok and parsed.answer == item.answer)
    rng_seed = int.from_bytes(hashlib.sha256(f"{base.seed}:{item.uid}".encode()).digest()[:4], "little")
    out: list[dict[str, Any] | Exception] = []
    offset = 0
    for cfg, part, assign in zip(cfgs, parts, assigns, strict=True):
        feats = res.features[:, offset : offset + cfg.k]
        offset += cfg.k
        try:
            runner: AblationRunner | PointCopyAblation
            if pointcopy:
                runner = PointCopyAblation(
                    model, x, res.generated_ids, copy_sources, assign, mode=cfg.ablation_mode, batch_size=cfg.batch_size
                )
            else:
                runner = AblationRunner(
                    model,
                    x,
                    res.generated_ids,
                    assign,
                    mode=cfg.ablation_mode,
                    batch_size=cfg.batch_size,
                    image=image,
                    region_labels=part.labels,
                    encode_image=lambda im: proc([im], [item.question]),
                )
            subsets = random_subsets(cfg.k, cfg.n_subsets, seed=rng_seed)
            r: dict[str, Any] = {
                "features": np.ascontiguousarray(feats),
                "subsets": subsets,
                "subset_deltas": runner.deltas(subsets, spans).T,
                "regions": part.labels,
            }
            if cfg.loo:
                r["loo_deltas"] = runner.deltas(loo_subsets(cfg.k), spans).T
        except (ValueError, OSError) as e:
            out.append(e)
            continue
        rec: dict[str, Any] = {
            "uid": item.uid,
            "question": item.question,
            "answer": item.answer,
            "output": text,
            "generated_ids": res.generated_ids,
            "image": item.image_path,
            "predicted": parsed.answer,
            "correct": correct,
            "spans": [{"text": s.text, "start": s.start, "end": s.end} for s in res.spans],
        }
        if pointcopy:
            rec["copy_sources"] = copy_sources
            rec["ablation_mode"] = cfg.ablation_mode
            assert res.copy_features is not None
            via = res.copy_features[:, offset - cfg.k : offset].sum(axis=(1, 2, 3))
            tot = feats.sum(axis=(1, 2, 3))
            rec["span_copy_share"] = [float(a / b) if b > 0 else 0.0 for a, b in zip(via, tot, strict=True)]
        if item.gt_sentences is not None and item.object_masks is not None:
            rec["span_gt_regions"] = _gt_regions(res.spans, item, part.labels, cfg.k)
        r["record"] = rec
        out.append(r)
    return out


def _gt_regions(spans: list[Any], item: CollectItem, labels: np.ndarray, k: int) -> list[list[int] | None]:
    """Per generated span, the regions mostly inside the objects its matching ground-truth sentence names.

    A generated span is matched to the ground-truth sentence with the same text;
    ``None`` when the text matches no ground-truth sentence (the model deviated).
    """
    assert item.gt_sentences is not None and item.object_masks is not None
    by_text = dict(item.gt_sentences)
    out: list[list[int] | None] = []
    area = np.bincount(labels.ravel(), minlength=k)
    for s in spans:
        objs = by_text.get(strip_pointing(s.text))
        if objs is None:
            out.append(None)
            continue
        mask = np.zeros(labels.shape, dtype=bool)
        for o in objs:
            mask |= item.object_masks[o]
        inside = np.bincount(labels[mask].ravel(), minlength=k)
        out.append([int(r) for r in np.nonzero(inside > 0.5 * np.maximum(area, 1))[0]])
    return out


def _write_shard(out: Path, name: str, arrays: dict[str, np.ndarray], recs: list[dict[str, Any]]) -> None:
    from safetensors.numpy import save_file

    tmp = out / f".{name}.safetensors.tmp"
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
        os.replace(tmp, out / f"{name}.safetensors")
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(f"could not write shard {name} to {out}: {e.strerror or e}") from e
    atomic_write_json(out / f"{name}.json", {"examples": recs})
