"""``attrib collect``: generate, capture, cut regions and compute causal targets, into resumable shards.

For each example: one generation of the model under an attention capture (its
variant's own tokens included, see [`attrib.variants`][attrib.variants]), a region partition
per configuration, and the log-prob drops of every span under random region
removals (and leave-one-out) from the variant's ablator. The storage format
and its atomic, resumable shards are [`attrib.collect.store`][attrib.collect.store]'s; the
examples come from [`attrib.collect.datasets`][attrib.collect.datasets].
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attrib.ablation import loo_subsets, random_subsets
from attrib.collect.datasets import CollectItem, Dataset, dataset_budget, open_dataset
from attrib.collect.store import Collection, check_writable, open_manifest, write_shard
from attrib.io import atomic_write_json
from attrib.models.loading import LoadedModel, check_model, detect_model_kind, load, parse_device
from attrib.models.loading import resolve_path as resolve_model_path
from attrib.models.signature import weights_fingerprint
from attrib.regions.methods import Segmenter, check_region_method
from attrib.variants.registry import AblationRequest, CaptureRequest, check_generate_kwargs, get_variant

__all__ = [
    "CollectConfig",
    "check_ablation_mode",
    "check_configs",
    "collect",
    "collect_chunk",
    "collect_many",
    "example_results",
    "gt_regions",
    "iter_items",
    "make_segmenters",
    "mask_regions",
    "model_fingerprint",
    "preflight",
    "shard_arrays",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class CollectConfig:
    """Settings of a collection (all part of its identity, but ``batch_size`` and ``device``).

    Attributes:
        model: A named (bundled) model, a local checkpoint directory or a hub id.
        dataset: A dataset spec (see [`attrib.collect.datasets`][attrib.collect.datasets]): ``"shapes:<split>"``,
            a JSONL path, ``folder:DIR`` or ``hf:DIR``.
        n: Examples to take (generated datasets) or the first ``n`` lines (JSONL; 0 = all).
        start: First example index.
        k: Regions per image.
        region_method: Region method (see [`attrib.regions`][attrib.regions]).
        ablation_mode: ``mask``, ``mean`` or ``repaint``.
        n_subsets: Random removal sets per example (each region removed with p = 0.5).
        loo: Also compute leave-one-out targets.
        seed: Seed of the removal sets (mixed with the example index).
        shard_size: Examples per shard.
        max_new_tokens: Generation budget (``None``: the dataset kind's own where it sets one, e.g. 256 for
            ``shapes2``, else 200).
        batch_size: Removal sets per ablation forward.
        dtype: Parameter dtype (``float32``, ``bfloat16``, ``float16``, ``auto``).
        device: Where the model runs (``cpu``, ``cuda``, ``cuda:N``; ``None``: CPU).
        system: A system prompt before every question.
        do_sample: Sample instead of greedy decoding (with ``temperature`` and ``top_p``).
        temperature: Sampling temperature.
        top_p: Nucleus-sampling mass.
        dinov3: The DINOv3 model (directory or hub id) of ``region_method="dinov3"``.
    """

    model: str = "shapes2-qwen25vl"
    dataset: str = "shapes2:train"
    n: int = 100
    start: int = 0
    k: int = 32
    region_method: str = "color"
    ablation_mode: str = "mask"
    n_subsets: int = 32
    loo: bool = False
    seed: int = 0
    shard_size: int = 16
    max_new_tokens: int | None = None
    batch_size: int = 16
    dtype: str = "float32"
    device: str | None = None
    system: str | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    dinov3: str | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens is None:
            object.__setattr__(self, "max_new_tokens", dataset_budget(self.dataset) or 200)
        if self.shard_size < 1 or self.n < 0 or self.k < 1 or self.n_subsets < 1:
            raise ValueError("shard_size, k and n_subsets must be >= 1 and n >= 0")
        if self.budget < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")
        if self.dtype not in ("float32", "bfloat16", "float16", "auto"):
            raise ValueError(f"dtype must be float32, bfloat16, float16 or auto, got {self.dtype!r}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be > 0 and top_p in (0, 1]")

    @property
    def budget(self) -> int:
        """The generation budget in tokens (``max_new_tokens``, resolved when the config was made)."""
        return int(self.max_new_tokens) if self.max_new_tokens is not None else 200

    def identity(self) -> dict[str, Any]:
        """What a resume must match: every setting that changes results (not the batch size or the device).

        Settings added after the first format version are left out at their defaults, so older
        collections keep their identity.
        """
        d = asdict(self)
        d.pop("batch_size")
        d.pop("device")
        for key, default in (
            ("dtype", "float32"),
            ("system", None),
            ("do_sample", False),
            ("temperature", 1.0),
            ("top_p", 1.0),
            ("dinov3", None),
        ):
            if d[key] == default:
                d.pop(key)
        return d

    def generate_kwargs(self) -> dict[str, Any]:
        """The decoding options (greedy unless ``do_sample``)."""
        if not self.do_sample:
            return {}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}


def iter_items(cfg: CollectConfig) -> Iterator[CollectItem]:
    """The collection's examples, in order.

    Raises:
        ValueError: For an unknown dataset kind.
        FileNotFoundError: For a missing JSONL file.
    """
    return open_dataset(cfg.dataset).items(cfg.n, cfg.start)


def model_fingerprint(model: str) -> dict[str, Any]:
    """What identifies the collection's model on disk (its directory and weight sizes, or the hub id)."""
    return weights_fingerprint(resolve_model_path(model))


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
        The finished [`Collection`][attrib.collect.store.Collection].

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
    is an ordinary collection, the same as [`collect`][attrib.collect.pipeline.collect] would write for its
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
    check_configs(cfgs, out_dirs, "collect_many")
    base = cfgs[0]
    if threads:
        torch.set_num_threads(threads)
    outs = [Path(o) for o in out_dirs]
    dev = preflight(cfgs)  # configuration errors fail here, before anything loads or is written
    # An unknown region method, or dinov3 without a model, fails here.
    segmenters = make_segmenters(cfgs, dev if isinstance(dev, torch.device) else None)
    for o in outs:
        check_writable(o)
    fingerprint = model_fingerprint(base.model)
    dataset = open_dataset(base.dataset)
    items = list(dataset.items(base.n, base.start))  # a bad dataset fails here, before anything is written
    manifests = [open_manifest(c.identity(), o, fingerprint) for c, o in zip(cfgs, outs, strict=True)]
    loaded = load(base.model, device=base.device, dtype=base.dtype)
    check_ablation_mode(base, loaded)
    check_generate_kwargs(get_variant(loaded.variant), base.generate_kwargs())
    sig = loaded.signature
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
        results = collect_chunk(
            [cfgs[i] for i in todo], loaded, dataset, chunk, si, on_progress, done, total, [segmenters[i] for i in todo]
        )
        done += len(chunk)
        for i, (arrays, recs, failures) in zip(todo, results, strict=True):
            write_shard(outs[i], name, arrays, recs)
            manifests[i]["shards"].append({"name": name, "n_examples": len(recs), "n_failed": len(failures)})
            manifests[i]["failures"].extend(failures)
            atomic_write_json(outs[i] / "manifest.json", manifests[i])
    out = []
    for m, o in zip(manifests, outs, strict=True):
        m["complete"] = True
        atomic_write_json(o / "manifest.json", m)
        out.append(Collection.open(o))
    return out


def preflight(cfgs: Sequence[CollectConfig]) -> Any:
    """Refuse configurations that cannot work, cheaply and before any model, dataset row or file is touched.

    Checks the device, the model argument (a named model, a hub id, or a whole checkpoint of a supported
    family), sampling against the model's variant, the region methods and the dataset spec.

    Returns:
        The parsed device (see [`parse_device`][attrib.models.loading.parse_device]).

    Raises:
        ValueError: Naming the option and the problem.
        FileNotFoundError: For a missing dataset or model path.
    """
    base = cfgs[0]
    dev = parse_device(base.device)
    for c in cfgs:
        check_region_method(c.region_method, dinov3=c.dinov3)
    open_dataset(base.dataset)
    check_model(base.model)
    if base.do_sample:
        where = resolve_model_path(base.model)
        kind = detect_model_kind(where) if isinstance(where, Path) else None
        check_generate_kwargs(get_variant(kind.name if kind is not None else "plain"), base.generate_kwargs())
    return dev


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


def make_segmenters(cfgs: Sequence[CollectConfig], device: Any = None) -> list[Segmenter]:
    """One region segmenter per configuration (a DINOv3 model is loaded once, on ``device``, and shared).

    Raises:
        ValueError: For an unknown region method, or dinov3 regions without a model.
    """
    dino: dict[str, Any] = {}
    out = []
    for c in cfgs:
        if c.region_method == "dinov3" and c.dinov3 is not None and c.dinov3 not in dino:
            dino[c.dinov3] = Segmenter("dinov3", c.k, dinov3=c.dinov3, device=device).options["features"]
        feats = dino.get(c.dinov3) if c.region_method == "dinov3" and c.dinov3 is not None else None
        out.append(Segmenter(c.region_method, c.k, **({"features": feats} if feats is not None else {})))
    return out


def collect_chunk(
    cfgs: list[CollectConfig],
    loaded: LoadedModel,
    dataset: Dataset,
    chunk: list[CollectItem],
    shard_index: int,
    on_progress: Callable[[int, int], None] | None,
    done: int,
    total: int,
    segmenters: Sequence[Segmenter] | None = None,
) -> list[tuple[dict[str, np.ndarray], list[dict[str, Any]], list[dict[str, str]]]]:
    """One shard's examples for every configuration: ``(arrays, records, failures)`` per configuration.

    An example that fails (a bad dataset row, an unreadable image, no complete span, a
    region method that cannot give K regions) is recorded with its reason and the rest go on.
    """
    segs = list(segmenters) if segmenters is not None else make_segmenters(cfgs)
    per: list[list[dict[str, Any]]] = [[] for _ in cfgs]
    failures: list[list[dict[str, str]]] = [[] for _ in cfgs]
    for j, item in enumerate(chunk):
        index = shard_index * cfgs[0].shard_size + j
        try:
            rs: list[dict[str, Any] | Exception] = list(example_results(cfgs, loaded, dataset, item, index, segs))
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
    return [shard_arrays(cfg, rs, fs) for cfg, rs, fs in zip(cfgs, per, failures, strict=True)]


def shard_arrays(
    cfg: CollectConfig, results: list[dict[str, Any]], failures: list[dict[str, str]]
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]], list[dict[str, str]]]:
    """One shard's arrays, records and failures for one configuration (empty shards stay well-formed)."""
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
    arrays["all_deltas"] = (
        np.concatenate([r["all_deltas"] for r in results]).astype(np.float32) if results else np.zeros(0, np.float32)
    )
    if cfg.loo:
        arrays["loo_deltas"] = (
            np.concatenate([r["loo_deltas"] for r in results]).astype(np.float32)
            if results
            else np.zeros((0, k), np.float32)
        )
    for name in sorted({n for r in results for n in r.get("parts", {})}):
        # alias key parts (v1: via_copy), the part of ``features`` that reached each region through them
        arrays[f"part.{name}"] = np.concatenate([r["parts"][name] for r in results]).astype(np.float32)
    for i, r in enumerate(results):
        arrays[f"regions_{i}"] = r["regions"].astype(np.int16)
    return arrays, [r["record"] for r in results], failures


def example_results(
    cfgs: list[CollectConfig],
    loaded: LoadedModel,
    dataset: Dataset,
    item: CollectItem,
    index: int,
    segmenters: Sequence[Segmenter] | None = None,
) -> list[dict[str, Any] | Exception]:
    """One generation, then per configuration: features, targets and the record (or the error).

    Args:
        cfgs: Configurations that differ only in their regions.
        loaded: The model.
        dataset: The dataset (it judges the answer).
        item: The example.
        index: Its index in the collection (seeds its regions).
        segmenters: One per configuration (default: made from the configurations).
    """
    base = cfgs[0]
    segs = list(segmenters) if segmenters is not None else make_segmenters(cfgs)
    variant = get_variant(loaded.variant)
    image = item.load_image()
    x = loaded.build(image, item.question, system=base.system)
    grid = loaded.grid_spec
    parts, assigns = [], []
    for cfg, seg in zip(cfgs, segs, strict=True):
        part = seg(image, seed=cfg.seed + index, given=item.regions)
        if part.k != cfg.k:
            raise ValueError(f"region method {cfg.region_method} gave K={part.k}, expected {cfg.k}")
        parts.append(part)
        assigns.append(part.assign_tokens(grid))
    stacked = np.concatenate([a.matrix for a in assigns]) if len(assigns) > 1 else assigns[0]
    request = CaptureRequest(x, stacked, max_new_tokens=base.budget, generate_kwargs=base.generate_kwargs())
    if base.do_sample:
        # Sampled traces are reproducible (and a resumed collection equal to an uninterrupted one): each
        # example draws from its own seed, without touching the caller's random state.
        devices = [loaded.device] if loaded.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(_example_seed(base.seed, item.uid))
            res = variant.capture(loaded, request)
    else:
        res = variant.capture(loaded, request)
    if not res.spans:
        raise ValueError("the generated trace has no complete span")
    spans = [(s.start, s.end) for s in res.spans]
    text = loaded.decode(res.generated_ids)
    predicted, correct = dataset.judge(text, item.answer)
    rng_seed = _example_seed(base.seed, item.uid)
    out: list[dict[str, Any] | Exception] = []
    offset = 0
    for cfg, part, assign in zip(cfgs, parts, assigns, strict=True):
        cols = slice(offset, offset + cfg.k)
        feats = res.features[:, cols]
        offset += cfg.k
        record_extras = variant.record_extras(res, cols, cfg.ablation_mode)
        try:
            runner = variant.ablator(
                loaded,
                AblationRequest(
                    x,
                    res.generated_ids,
                    assign,
                    record=record_extras,
                    mode=cfg.ablation_mode,
                    batch_size=cfg.batch_size,
                    image=image,
                    region_labels=part.labels,
                    encode_image=lambda im: loaded.build(im, item.question, system=base.system),
                ),
            )
            subsets = random_subsets(cfg.k, cfg.n_subsets, seed=rng_seed)
            r: dict[str, Any] = {
                "features": np.ascontiguousarray(feats),
                "subsets": subsets,
                "subset_deltas": runner.deltas(subsets, spans).T,
                # every region at once: the all-regions drop, which picks the image-dependent spans of
                # ``attrib evaluate`` without touching any scored removal set (one more forward)
                "all_deltas": runner.deltas(np.ones((1, cfg.k), dtype=bool), spans)[0],
                "regions": part.labels,
            }
            alias = {n: p for n, p in res.parts.items() if p.ndim == 4}  # (n_spans, K, L, H) alias parts
            if alias:
                r["parts"] = {n: np.ascontiguousarray(p[:, cols]) for n, p in alias.items()}
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
            "predicted": predicted,
            "correct": correct,
            "spans": [{"text": s.text, "start": s.start, "end": s.end} for s in res.spans],
            **record_extras,
        }
        if item.truth is not None:
            rec["span_gt_regions"] = gt_regions(res.spans, item.truth, part.labels, cfg.k)
        if item.span_info is not None:
            infos = [item.span_info(s.text) for s in res.spans]
            rec["span_kinds"] = [i.kind for i in infos]
            rec["span_object_regions"] = [
                None if i.object_mask is None else mask_regions(i.object_mask, part.labels, cfg.k) for i in infos
            ]
        r["record"] = rec
        out.append(r)
    return out


def _example_seed(seed: int, uid: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{uid}".encode()).digest()[:4], "little")


def gt_regions(
    spans: Sequence[Any], truth: Callable[[str], np.ndarray | None], labels: np.ndarray, k: int
) -> list[list[int] | None]:
    """Per span, the regions mostly (over half their pixels) inside the objects it names.

    Args:
        spans: The generated spans (``text`` attribute).
        truth: ``truth(span_text)``: the pixel mask of the objects the span names,
            ``None`` when the dataset cannot tell (the span gets ``None``).
        labels: ``(H, W)`` region map.
        k: Number of regions.
    """
    out: list[list[int] | None] = []
    for s in spans:
        mask = truth(s.text)
        out.append(None if mask is None else mask_regions(mask, labels, k))
    return out


def mask_regions(mask: np.ndarray, labels: np.ndarray, k: int) -> list[int]:
    """The regions of ``labels`` mostly (over half their pixels) inside the boolean pixel ``mask``."""
    area = np.bincount(labels.ravel(), minlength=k)
    inside = np.bincount(labels[np.asarray(mask, dtype=bool)].ravel(), minlength=k)
    return [int(r) for r in np.nonzero(inside > 0.5 * np.maximum(area, 1))[0]]


def check_ablation_mode(cfg: CollectConfig, loaded: LoadedModel) -> None:
    """Refuse an ablation mode the model's variant does not support, before any work.

    Raises:
        ValueError: Naming the mode, the variant and the modes it supports.
    """
    variant = get_variant(loaded.variant)
    if cfg.ablation_mode not in variant.ablation_modes:
        supported = ", ".join(variant.ablation_modes) or "none (it cannot be collected)"
        raise ValueError(
            f"ablation mode {cfg.ablation_mode!r} is not supported for {variant.description}; supported: {supported}"
        )
