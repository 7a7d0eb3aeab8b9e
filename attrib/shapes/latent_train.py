"""Latent-visual-token variants of the bundled model: selection, fine-tuning, evaluation, intervention probing.

The three modes of [`LatentModel`][attrib.variants.latent.model.LatentModel] (``raw``, ``ema``,
``pca``) are fine-tuned from the same base model on the same examples, in the
same order, for the same number of steps ([`LatentConfig`][attrib.shapes.latent_train.LatentConfig]); only the mode
differs. The vision tower is frozen, so the image embeddings (the latents'
targets, and the PCA basis) stay those of the base model.

Benchmarks. The experiment runs on either benchmark: ``shapes`` (v1, the model ``shapes-qwen25vl``) or
``shapes2`` (v2, [`attrib.shapes.v2`][attrib.shapes.v2], the model ``shapes2-qwen25vl``). A run's benchmark
is its base model's ([`model_benchmark`][attrib.shapes.model.model_benchmark]), set in
[`LatentConfig.benchmark`][attrib.shapes.latent_train.LatentConfig]; the pool, the vocabulary, the traces and
the generation budgets ([`sample_budget`][attrib.shapes.latent_train.sample_budget],
[`latent_budget`][attrib.shapes.latent_train.latent_budget]) follow it, and selection files and latent
models record it, so that a selection or a model of the other benchmark is refused.

Traces. In every sentence that introduces one object (the sentences that carry
a region block in the v1 variant, [`attrib.shapes.pointing`][attrib.shapes.pointing]: on benchmark v1
``There is a <size> <colour> <shape> at the <place>.``, on v2 the ``object`` sentences
``A <size> <colour> <shape> at the <place>.``), the object phrase is followed by a latent block:

```text
There is a large red triangle<latent><|latent|><|latent|><|latent|><|latent|></latent> at the top right.
A large red triangle<latent><|latent|><|latent|><|latent|><|latent|></latent> at the top right.
```

Latent ``i`` of a block is supervised towards the image input embedding of the
object's ``i``-th target cell (cycling when the object has fewer cells than
``n_latent``): auxiliary visual supervision.

Capacity-guided selection. Before training, the base model answers each example
of the training pool ``samples`` times by sampling (temperature 1); examples it
gets right at most a share ``tau`` of the time get latent traces, the others the
plain trace (no latent supervision).

Intervention probing. Every latent a model feeds back is replaced by

* ``zeros``: the zero vector;
* ``noise``: Gaussian noise rescaled to the latent's own norm;
* ``mean``: the mean image input embedding ``μ`` (the PCA mean);
* ``shuffle``: the latent at the same block and slot of another test example
  (a fixed derangement of the examples; the last block of the other example
  when it has fewer);

and the answer accuracy is compared with the unchanged model on the same
examples (paired bootstrap over examples).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from attrib.shapes.dataset import Example, trace_text
from attrib.shapes.parse import parse_output
from attrib.shapes.pointing import target_cells
from attrib.shapes.processor import ShapesProcessor, token_id
from attrib.shapes.train import find_checkpoint, load_checkpoint, remove_checkpoint, save_checkpoint
from attrib.shapes.vocab import benchmark_words
from attrib.variants.latent.model import (
    LATENT,
    LATENT_CLOSE,
    LATENT_OPEN,
    LATENT_TOKENS,
    LatentGeneration,
    LatentModel,
    latent_norm_stats,
    require_latent,
)

__all__ = [
    "BENCHMARKS",
    "BUNDLED_BASE",
    "INTERVENTIONS",
    "LatentConfig",
    "benchmark_examples",
    "build_latent_model",
    "evaluate_latent",
    "latent_batch",
    "latent_budget",
    "latent_processor",
    "latent_trace",
    "load_selection",
    "sample_budget",
    "sampled_accuracy",
    "save_selection",
    "selection_benchmark",
    "strip_latent",
    "train_latent",
]

logger = logging.getLogger(__name__)

#: Intervention kinds of [`evaluate_latent`][attrib.shapes.latent_train.evaluate_latent]
#: (``none`` is the unchanged model).
INTERVENTIONS: tuple[str, ...] = ("none", "zeros", "noise", "mean", "shuffle")
#: The benchmarks the experiment runs on: ``shapes`` (v1) and ``shapes2`` (v2).
BENCHMARKS: tuple[str, ...] = ("shapes", "shapes2")
#: The bundled base model of each benchmark.
BUNDLED_BASE: dict[str, str] = {"shapes": "shapes-qwen25vl", "shapes2": "shapes2-qwen25vl"}
_NAMES = {"shapes": "benchmark v1", "shapes2": "benchmark v2"}
_INTRO = re.compile(r"^There is an? ")  # a v1 object sentence
_INTRO2 = re.compile(r"^An? ")  # a v2 object sentence (its kind says ``object``)
_BLOCK = re.compile(re.escape(LATENT_OPEN) + r".*?" + re.escape(LATENT_CLOSE))


def _check_benchmark(benchmark: str) -> None:
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose one of {BENCHMARKS}")


def benchmark_examples(benchmark: str, split: str, n: int, start: int = 0) -> list[Example]:
    """Examples ``start .. start+n-1`` of ``split`` of a benchmark, at its default difficulty.

    Args:
        benchmark: ``"shapes"`` (v1, [`attrib.shapes.dataset`][attrib.shapes.dataset]) or ``"shapes2"``
            (v2, [`attrib.shapes.v2.dataset`][attrib.shapes.v2.dataset]: the canvas mix).
        split: ``train``, ``validation`` or ``test``.
        n: Number of examples.
        start: First example index.

    Raises:
        ValueError: For an unknown benchmark or split.
    """
    _check_benchmark(benchmark)
    if benchmark == "shapes2":
        from attrib.shapes.v2.dataset import iter_split as iter_split2

        return list(iter_split2(split, n, start=start))
    from attrib.shapes.dataset import iter_split

    return list(iter_split(split, n, start=start))


def sample_budget(benchmark: str) -> int:
    """Generation budget of the base model's sampled answers in selection (plain traces).

    200 tokens on benchmark v1 (the budget of its runs; its longest reference output is 122 tokens), 256
    on v2 (as ``attrib shapes eval``; its longest reference output is under 190 tokens).

    Raises:
        ValueError: For an unknown benchmark.
    """
    _check_benchmark(benchmark)
    return 200 if benchmark == "shapes" else 256


def latent_budget(benchmark: str, n_latent: int = 4) -> int:
    """Positions a latent model may generate per example, its latent blocks included.

    Benchmark v1: 240 (the budget of its runs; its longest latent trace, 8 blocks of 4 latents, is 170
    positions). Benchmark v2 traces are about 12 sentences and name every object they look at, each with a
    latent block of ``n_latent + 2`` positions: 256 for the text (as ``attrib shapes eval``) plus one block
    per object of the most crowded default-difficulty v2 scene (14), i.e. 340 with 4 latents (the longest
    v2 reference latent trace in 2,000 examples is 273 positions before the end token).

    Raises:
        ValueError: For an unknown benchmark or ``n_latent`` < 1.
    """
    _check_benchmark(benchmark)
    if n_latent < 1:
        raise ValueError(f"n_latent must be >= 1, got {n_latent}")
    if benchmark == "shapes":
        return 240
    from attrib.shapes.v2.scene import object_range, preset

    most = object_range(preset("medium"), 448, 448)[1]
    return sample_budget(benchmark) + most * (n_latent + 2)


def _latent_sentence(sentence: Any) -> bool:
    """Whether a ground-truth sentence introduces one object (and so carries a latent block)."""
    t, kind = sentence.text, getattr(sentence, "kind", None)
    if len(sentence.objects) != 1 or " at the " not in t:
        return False
    if kind is None:  # a v1 sentence carries no kind
        return _INTRO.match(t) is not None
    return kind == "object" and _INTRO2.match(t) is not None


def latent_trace(example: Example, n_latent: int = 4) -> tuple[str, list[int]]:
    """The latent-variant assistant output of ``example`` (v1 or v2) and the target cell of every latent slot.

    Returns:
        ``(text, cells)``: one target cell per ``<|latent|>``, in order (raster order over the example's
        canvas grid of merged cells, the order of its visual tokens).
    """
    texts: list[str] = []
    cells: list[int] = []
    for s in example.question.sentences:
        t = s.text
        if _latent_sentence(s):
            tc = target_cells(example.scene, s.objects[0])
            head, tail = t.split(" at the ", 1)
            t = f"{head}{LATENT_OPEN}{LATENT * n_latent}{LATENT_CLOSE} at the {tail}"
            cells.extend(tc[i % len(tc)] for i in range(n_latent))
        texts.append(t)
    return trace_text(texts, example.question.answer), cells


def strip_latent(text: str) -> str:
    """Remove latent blocks (the base model's trace format remains)."""
    return _BLOCK.sub("", text)


def latent_batch(
    processor: ShapesProcessor, examples: Sequence[Example], use_latent: Sequence[bool], n_latent: int
) -> dict[str, torch.Tensor]:
    """A teacher-forcing batch: latent traces where ``use_latent``, plain traces elsewhere.

    Adds ``latent_target`` (target cell per latent slot, ``-1`` elsewhere); the
    latent slots and ``</latent>`` (both fed, not predicted) are unlabelled.

    Raises:
        ValueError: If the processor lacks the latent tokens or a trace's slots do not line up.
    """
    traces = [
        latent_trace(e, n_latent) if u else (e.target_text(), []) for e, u in zip(examples, use_latent, strict=True)
    ]
    batch = processor([e.image() for e in examples], [e.question.text for e in examples], [t for t, _ in traces])
    lat_id = token_id(processor.tokenizer, LATENT)
    close_id = token_id(processor.tokenizer, LATENT_CLOSE)
    if lat_id == processor.tokenizer.unk_token_id:
        raise ValueError("the processor has no <|latent|> token; build it with extra_special=LATENT_TOKENS")
    ids = batch["input_ids"]
    target = torch.full_like(ids, -1)
    for i, (_, cells) in enumerate(traces):
        where = torch.nonzero(ids[i] == lat_id).flatten()
        if where.numel() != len(cells):
            raise ValueError(f"trace {examples[i].uid}: {where.numel()} latent slots but {len(cells)} targets")
        if cells:
            target[i, where] = torch.tensor(cells, dtype=torch.long)
    labels = batch["labels"].clone()
    labels[(ids == lat_id) | (ids == close_id)] = -100
    batch["labels"] = labels
    batch["latent_target"] = target
    return batch


@dataclass(frozen=True, kw_only=True)
class LatentConfig:
    """Fine-tuning of one latent variant.

    Attributes:
        mode: ``raw``, ``ema`` or ``pca``.
        seed: Seeds the example order and the head's initial state.
        steps: Optimiser steps.
        batch_size: Examples per step.
        lr: Peak learning rate (AdamW, linear warm-up, cosine decay to 10 %).
        warmup: Warm-up steps.
        n_latent: Latent tokens per block.
        pca_k: Principal axes of the PCA head.
        aux_weight: Weight of the auxiliary latent loss.
        tau: Capacity-guided selection: examples whose base sampled accuracy is ``<= tau``
            get latent traces (``1.0`` gives every example latent traces).
        benchmark: The benchmark of the pool and the vocabulary: ``"shapes"`` (v1) or ``"shapes2"``
            (v2); the base model's.
        pool_start: First training-split index of the example pool.
        pool_n: Pool size.
        threads: torch CPU threads.
        ckpt_every: Steps between resumable checkpoints (0 disables).
    """

    mode: str = "pca"
    seed: int = 0
    steps: int = 300
    batch_size: int = 8
    lr: float = 3e-4
    warmup: int = 20
    n_latent: int = 4
    pca_k: int = 32
    aux_weight: float = 1.0
    tau: float = 0.5
    benchmark: str = "shapes"
    pool_start: int = 0
    pool_n: int = 800
    threads: int = 2
    ckpt_every: int = 100

    def __post_init__(self) -> None:
        if self.mode not in ("raw", "ema", "pca"):
            raise ValueError(f"mode must be raw, ema or pca, got {self.mode!r}")
        if self.steps < 1 or self.batch_size < 1 or self.pool_n < 1:
            raise ValueError("steps, batch_size and pool_n must be >= 1")
        if not 0 <= self.tau <= 1:
            raise ValueError(f"tau must be in [0, 1], got {self.tau}")
        _check_benchmark(self.benchmark)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def pool(cfg: LatentConfig) -> list[Example]:
    """The training pool (the same for every mode and seed): ``cfg.benchmark``'s training examples."""
    return benchmark_examples(cfg.benchmark, "train", cfg.pool_n, cfg.pool_start)


@torch.no_grad()
def sampled_accuracy(
    model: Any,
    processor: ShapesProcessor,
    examples: Sequence[Example],
    *,
    samples: int = 4,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    max_new_tokens: int = 200,
    on_progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Share of ``samples`` sampled answers that are correct, per example (capacity-guided selection).

    ``max_new_tokens`` is the budget of each answer; the benchmark's is
    [`sample_budget`][attrib.shapes.latent_train.sample_budget] (v1: 200, v2: 256).

    Raises:
        ValueError: If ``samples`` < 1 or ``temperature`` <= 0.
    """
    if samples < 1 or temperature <= 0:
        raise ValueError(f"samples must be >= 1 and temperature > 0, got {samples}, {temperature}")
    torch.manual_seed(seed)
    jobs = [i for i in range(len(examples)) for _ in range(samples)]
    right = np.zeros(len(examples))
    for b in range(0, len(jobs), batch_size):
        idx = jobs[b : b + batch_size]
        batch = processor([examples[i].image() for i in idx], [examples[i].question.text for i in idx])
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            eos_token_id=int(processor.tokenizer.eos_token_id),
            pad_token_id=int(processor.tokenizer.pad_token_id),
        )
        for i, row in zip(idx, out[:, batch["input_ids"].shape[1] :], strict=True):
            p = parse_output(processor.decode(row))
            right[i] += float(p.ok and p.answer == examples[i].answer)
        if on_progress is not None:
            on_progress(min(len(jobs), b + batch_size), len(jobs))
    return right / samples


def latent_processor(benchmark: str = "shapes") -> ShapesProcessor:
    """The benchmark's vocabulary (that of its bundled model) plus the three latent tokens (ids after it).

    Raises:
        ValueError: For an unknown benchmark.
    """
    _check_benchmark(benchmark)
    if benchmark == "shapes2":
        from attrib.shapes.v2.dataset import benchmark_words as benchmark_words2

        return ShapesProcessor.create(benchmark_words2(), extra_special=LATENT_TOKENS)
    return ShapesProcessor.create(benchmark_words(), extra_special=LATENT_TOKENS)


def build_latent_model(
    base: Any, base_processor: ShapesProcessor, cfg: LatentConfig, *, align_examples: int = 64
) -> tuple[LatentModel, ShapesProcessor]:
    """Wrap a trained base model as a latent variant: new token rows, PCA/EMA statistics, frozen vision.

    The three new embedding and output rows start at the mean of the existing ones.
    ``μ``, ``P_k`` and the reference norms come from the image embeddings of the
    first ``align_examples`` examples of the pool (``cfg.benchmark``'s).

    Raises:
        ValueError: If the base processor's vocabulary is not ``cfg.benchmark``'s.
    """
    processor = latent_processor(cfg.benchmark)
    old, new = base_processor.tokenizer.get_vocab(), processor.tokenizer.get_vocab()
    if any(new.get(t) != i for t, i in old.items()):
        raise ValueError(
            f"the base model's vocabulary is not that of {_NAMES[cfg.benchmark]} ({cfg.benchmark!r}); "
            "cannot add latent tokens"
        )
    n_old = base.get_input_embeddings().num_embeddings
    base.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
    with torch.no_grad():
        for mat in (base.get_input_embeddings().weight, base.lm_head.weight):
            mat[n_old:] = mat[:n_old].mean(0)
    base.config.text_config.vocab_size = len(processor.tokenizer)
    ids = tuple(token_id(processor.tokenizer, t) for t in LATENT_TOKENS)
    torch.manual_seed(cfg.seed)
    model = LatentModel(base, ids, mode=cfg.mode, n_latent=cfg.n_latent, pca_k=cfg.pca_k)  # type: ignore[arg-type]
    if model.head is not None and cfg.seed:
        torch.nn.init.normal_(model.head.weight, std=1e-3)  # seed 0 keeps the zero start
    for p in base.model.visual.parameters():
        p.requires_grad_(False)
    exs = pool(cfg)[:align_examples]
    with torch.no_grad():
        b = processor([e.image() for e in exs], [e.question.text for e in exs])
        model.init_alignment(model.image_embeddings(b["pixel_values"], b["image_grid_thw"]))
    return model, processor


def _lr_at(step: int, cfg: LatentConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _order(cfg: LatentConfig) -> np.ndarray:
    rng = np.random.default_rng([cfg.seed, 7919])
    reps = math.ceil(cfg.steps * cfg.batch_size / cfg.pool_n)
    return np.concatenate([rng.permutation(cfg.pool_n) for _ in range(reps)])


def train_latent(
    base_dir: str | Path,
    cfg: LatentConfig,
    out_dir: str | Path,
    selection: dict[str, float],
    *,
    on_step: Callable[[int, int, float], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune one latent variant from a base model directory and save it to ``out_dir`` (atomically).

    Args:
        base_dir: The base model (a plain trained model directory of ``cfg.benchmark``).
        cfg: Fine-tuning configuration.
        out_dir: Output directory.
        selection: Base sampled accuracy by example uid
            ([`sampled_accuracy`][attrib.shapes.latent_train.sampled_accuracy]),
            for every example of the pool.
        on_step: Called as ``on_step(step, total, loss)``.

    Returns:
        The training log (also written to ``out_dir/latent_train_log.json``).

    Raises:
        ValueError: If the base model was made for another benchmark than ``cfg.benchmark``,
            ``selection`` misses pool examples, or a checkpoint has another config.
    """
    from attrib.shapes.model import load_model, model_benchmark

    made_for = model_benchmark(base_dir)
    if made_for != cfg.benchmark:
        raise ValueError(
            f"the base model {base_dir} is a {_NAMES[made_for]} model ({made_for!r}), but the latent run is "
            f"configured for {_NAMES[cfg.benchmark]} ({cfg.benchmark!r})"
        )
    torch.set_num_threads(cfg.threads)
    exs = pool(cfg)
    missing = [e.uid for e in exs if e.uid not in selection]
    if missing:
        raise ValueError(f"the selection lacks {len(missing)} pool examples (first: {missing[0]}); rerun selection")
    hard = [selection[e.uid] <= cfg.tau for e in exs]
    base, base_proc = load_model(base_dir)
    model, processor = build_latent_model(base, base_proc, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    out = Path(out_dir)
    ckpt = out.with_name(out.name + ".ckpt")
    start = 0
    log: dict[str, Any] = {"losses": [], "aux": [], "seconds": 0.0}
    where = find_checkpoint(ckpt)  # crash-safe checkpoints: see attrib.shapes.train
    if where is not None:
        meta = json.loads((where / "meta.json").read_text())
        theirs = {"benchmark": "shapes", **meta["config"]}  # checkpoints from before benchmark v2 are v1's
        if theirs != cfg.to_dict() or meta["base"] != str(base_dir):
            raise ValueError(f"checkpoint {ckpt} was written with another config; delete it to start afresh")
        state, opt_state = load_checkpoint(where)
        model.load_state_dict(state, strict=True)
        opt.load_state_dict(opt_state)
        start, log = int(meta["step"]), meta["log"]
        logger.info("resuming latent training from step %d", start)
    order = _order(cfg)
    model.train()
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        batch = latent_batch(processor, [exs[i] for i in idx], [hard[i] for i in idx], cfg.n_latent)
        with torch.no_grad():
            embeds = model.image_embeddings(batch.pop("pixel_values"), batch["image_grid_thw"])
        o = model(**batch, image_embeds=embeds, aux_weight=cfg.aux_weight)
        assert o.loss is not None and o.lm_loss is not None and o.aux_loss is not None
        o.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        lv = float(o.loss.detach())
        if not math.isfinite(lv):
            raise RuntimeError(f"latent training diverged at step {step}: loss={lv}")
        log["losses"].append([step, float(o.lm_loss.detach())])
        log["aux"].append([step, float(o.aux_loss.detach())])
        if on_step is not None:
            on_step(step + 1, cfg.steps, lv)
        if cfg.ckpt_every and (step + 1) % cfg.ckpt_every == 0 and step + 1 < cfg.steps:
            log["seconds"] = float(log["seconds"]) + time.perf_counter() - t0
            t0 = time.perf_counter()
            _save_ckpt(ckpt, model, opt, step + 1, cfg, str(base_dir), log)
    log["seconds"] = float(log["seconds"]) + time.perf_counter() - t0
    model.eval()
    log.update(
        config=cfg.to_dict(),
        base=str(base_dir),
        n_hard=int(sum(hard)),
        pool_n=len(exs),
        torch=torch.__version__,
    )
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp, dataset=f"{cfg.benchmark}:test")  # its default examples (attrib norms)
    (tmp / "latent_train_log.json").write_text(json.dumps(log) + "\n")
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    remove_checkpoint(ckpt)
    return log


def _save_ckpt(
    ckpt: Path,
    model: LatentModel,
    opt: torch.optim.Optimizer,
    step: int,
    cfg: LatentConfig,
    base: str,
    log: dict[str, Any],
) -> None:
    meta = {"step": step, "config": cfg.to_dict(), "base": base, "log": log}
    save_checkpoint(ckpt, step, model.state_dict(), opt.state_dict(), meta)


def load_latent(path: str | Path) -> tuple[LatentModel, ShapesProcessor]:
    """Load a latent-variant directory and its processor.

    Raises:
        FileNotFoundError: If the directory is missing.
        ValueError: If it is not a latent checkpoint (the message says it has no latent support).
    """
    from attrib.models.loading import load

    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"model directory not found: {p}")
    if not LatentModel.is_checkpoint(p):
        raise ValueError(
            f"{p} is not a latent-visual-token checkpoint: it has no latent support; train one with "
            "`attrib latent train`"
        )
    loaded = load(p)
    if not isinstance(loaded.processor, ShapesProcessor):
        raise ValueError(f"{p} does not use the benchmark's processor")
    return loaded.model, loaded.processor


def _derangement(n: int, seed: int) -> np.ndarray:
    if n < 2:
        raise ValueError("shuffling latents across examples needs at least 2 examples")
    rng = np.random.default_rng(seed)
    while True:
        p = rng.permutation(n)
        if not bool((p == np.arange(n)).any()):
            return p


def evaluate_latent(
    model: LatentModel,
    processor: ShapesProcessor,
    examples: Sequence[Example],
    *,
    interventions: Sequence[str] = INTERVENTIONS,
    batch_size: int = 32,
    seed: int = 0,
    max_new_tokens: int = 240,
    n_boot: int = 2000,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Answer accuracy of a latent model, unchanged and under each intervention.

    ``max_new_tokens`` counts latent positions; the benchmark's budget is
    [`latent_budget`][attrib.shapes.latent_train.latent_budget] (v1: 240, v2: 340 with 4 latents per block).

    Returns:
        ``{"n", "interventions": {kind: {"accuracy", "parse_rate", "delta", "delta_ci", "n_latents"}},
        "latent_norms": {...}, "blocks_per_example", "correct": {kind: [bool, ...]}}``;
        ``delta`` is the accuracy change against ``none`` on the same examples, with a
        paired bootstrap 95 % interval.

    Raises:
        TypeError: If ``model`` has no latent support.
        ValueError: For an unknown intervention or fewer than 2 examples with ``shuffle``.
    """
    from metrics.stats import bootstrap_ci

    require_latent(model)

    for k in interventions:
        if k not in INTERVENTIONS:
            raise ValueError(f"unknown intervention {k!r}; choose from {INTERVENTIONS}")
    kinds = ["none", *[k for k in interventions if k != "none"]]
    perm = _derangement(len(examples), seed) if "shuffle" in kinds else None
    gen = torch.Generator().manual_seed(seed)
    correct: dict[str, list[bool]] = {}
    parsed: dict[str, list[bool]] = {}
    recorded: list[list[tuple[int, int, torch.Tensor]]] = []
    produced: list[torch.Tensor] = []
    n_fed: dict[str, int] = {}
    total, done = len(kinds) * len(examples), 0
    for kind in kinds:
        correct[kind], parsed[kind], n_fed[kind] = [], [], 0
        for b in range(0, len(examples), batch_size):
            chunk = examples[b : b + batch_size]
            fn = _intervention(kind, model, b, recorded, perm, gen)
            batch = processor([e.image() for e in chunk], [e.question.text for e in chunk])
            inputs: dict[str, Any] = dict(batch)
            g = cast(
                LatentGeneration,
                model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=int(processor.tokenizer.eos_token_id),
                    intervene=fn,
                ),
            )
            for r, e in enumerate(chunk):
                p = parse_output(strip_latent(processor.decode(g.generated(r)[0])))
                correct[kind].append(bool(p.ok and p.answer == e.answer))
                parsed[kind].append(bool(p.ok))
                n_fed[kind] += len(g.latents[r])
                if kind == "none":
                    recorded.append(g.latents[r])
                    produced.extend(g.raw_latents[r])
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, total)
    base = np.asarray(correct["none"], dtype=np.float64)
    res: dict[str, Any] = {}
    for kind in kinds:
        acc = np.asarray(correct[kind], dtype=np.float64)
        d = acc - base
        lo, hi = (0.0, 0.0) if kind == "none" else bootstrap_ci(d, n_boot=n_boot, seed=seed)
        res[kind] = {
            "accuracy": float(acc.mean()),
            "parse_rate": float(np.mean(parsed[kind])),
            "delta": float(d.mean()),
            "delta_ci": [float(lo), float(hi)],
            "n_latents": n_fed[kind],
        }
    return {
        "n": len(examples),
        "mode": model.mode,
        "interventions": res,
        "latent_norms": latent_norm_stats(model, produced),
        "blocks_per_example": float(np.mean([len({b for b, _, _ in r}) for r in recorded])) if recorded else 0.0,
        "correct": correct,
    }


def _intervention(
    kind: str,
    model: LatentModel,
    offset: int,
    recorded: list[list[tuple[int, int, torch.Tensor]]],
    perm: np.ndarray | None,
    gen: torch.Generator,
) -> Callable[[int, int, int, torch.Tensor], torch.Tensor] | None:
    if kind == "none":
        return None
    if kind == "zeros":
        return lambda _r, _b, _s, v: torch.zeros_like(v)
    if kind == "mean":
        return lambda _r, _b, _s, v: model.mu.to(v.dtype).clone()
    if kind == "noise":

        def noise(_r: int, _b: int, _s: int, v: torch.Tensor) -> torch.Tensor:
            z = torch.randn(v.shape, generator=gen).to(v.dtype)
            return z * (v.norm() / z.norm().clamp_min(1e-12))

        return noise
    assert perm is not None

    def shuffle(r: int, blk: int, slot: int, v: torch.Tensor) -> torch.Tensor:
        other = recorded[int(perm[offset + r])]
        if not other:
            return model.mu.to(v.dtype).clone()  # the other example fed no latent: its "latent" is the mean
        blocks = sorted({b for b, _, _ in other})
        want = blk if blk in blocks else blocks[-1]
        for b, s, x in other:
            if b == want and s == slot:
                return x.to(v.dtype)
        return other[-1][2].to(v.dtype)

    return shuffle


def seed_table(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation across seeds of accuracy, latent norm ratios and intervention deltas.

    Args:
        results: [`evaluate_latent`][attrib.shapes.latent_train.evaluate_latent] results of one mode, one per seed.
    """
    accs = [r["interventions"]["none"]["accuracy"] for r in results]
    out: dict[str, Any] = {
        "seeds": len(results),
        "accuracy_mean": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
        "accuracy_per_seed": accs,
        "ratio_to_image_input": float(np.mean([r["latent_norms"]["ratio_to_image_input"] for r in results])),
        "ratio_to_text_input": float(np.mean([r["latent_norms"]["ratio_to_text_input"] for r in results])),
    }
    for k in results[0]["interventions"]:
        if k != "none":
            out[f"delta_{k}"] = float(np.mean([r["interventions"][k]["delta"] for r in results]))
    return out


def save_selection(path: str | Path, examples: Sequence[Example], acc: np.ndarray, meta: dict[str, Any]) -> None:
    """Write a selection file (``{"accuracy": {uid: share}, ...meta}``) atomically.

    ``meta`` should hold ``"benchmark"`` (the pool's): example uids (``train-12``) do not say which
    benchmark they come from, and [`load_selection`][attrib.shapes.latent_train.load_selection] reads a file
    without it as benchmark v1's.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(
        json.dumps({"accuracy": {e.uid: float(a) for e, a in zip(examples, acc, strict=True)}, **meta}) + "\n"
    )
    os.replace(tmp, p)


def _read_selection(path: str | Path) -> tuple[dict[str, float], str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"selection file not found: {p}; run `attrib latent select`")
    try:
        d = json.loads(p.read_text())
        acc = {str(k): float(v) for k, v in d["accuracy"].items()}
        bench = str(d.get("benchmark", "shapes"))  # files from before benchmark v2 are v1's
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"malformed selection file {p}: {e}") from e
    if bench not in BENCHMARKS:
        raise ValueError(f"malformed selection file {p}: unknown benchmark {bench!r}")
    return acc, bench


def selection_benchmark(path: str | Path) -> str:
    """The benchmark a selection file's pool was drawn from (``"shapes"`` when it records none).

    Raises:
        FileNotFoundError: If missing.
        ValueError: If malformed.
    """
    return _read_selection(path)[1]


def load_selection(path: str | Path, *, benchmark: str | None = None) -> dict[str, float]:
    """Read a selection file written by [`save_selection`][attrib.shapes.latent_train.save_selection].

    Args:
        path: The file.
        benchmark: When given, the benchmark the selection must have been made on (the base model's).

    Raises:
        FileNotFoundError: If missing.
        ValueError: If malformed, or made on another benchmark than ``benchmark``.
    """
    acc, made_on = _read_selection(path)
    if benchmark is not None and made_on != benchmark:
        raise ValueError(
            f"selection {path} was made on {_NAMES[made_on]} ({made_on!r}) but the base model is a "
            f"{_NAMES.get(benchmark, benchmark)} model ({benchmark!r}); rerun `attrib latent select` with that base "
            f"or train from a {made_on!r} base (--base {BUNDLED_BASE[made_on]})"
        )
    return acc


def latent_norms(
    model: LatentModel,
    processor: ShapesProcessor,
    examples: Sequence[Example],
    *,
    name: str = "",
    max_new_tokens: int = 256,
) -> Any:
    """Layer-wise norms by token type (text, image, latent) along the model's own greedy traces.

    See [`attrib.variants.latent.variant.latent_norm_states`][attrib.variants.latent.variant.latent_norm_states];
    ``max_new_tokens`` is the budget of each trace, latent positions included.

    Returns:
        A [`attrib.analysis.norms.NormReport`][attrib.analysis.norms.NormReport].
    """
    from attrib.analysis.norms import norm_report
    from attrib.variants.latent.variant import latent_norm_states

    require_latent(model)
    inputs = (processor.build(e.image(), e.question.text) for e in examples)
    hs_all: list[Sequence[torch.Tensor]] = []
    types: list[np.ndarray] = []
    eos = int(processor.tokenizer.eos_token_id)
    for hs, ty in latent_norm_states(model, inputs, eos_token_id=eos, max_new_tokens=max_new_tokens):
        hs_all.append(hs)
        types.append(ty)
    return norm_report(hs_all, types, model=name or f"latent-{model.mode}")
