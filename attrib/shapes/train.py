"""Train the bundled Qwen2.5-VL from scratch on ``attrib.shapes`` traces (teacher forcing).

Training is deterministic for a given seed and thread count: examples are a
pure function of the step index, and the model is initialised from the seed.
It checkpoints every ``ckpt_every`` steps (safetensors for weights, a
``weights_only`` torch file for the optimizer) and resumes after a kill. The
final directory is written to a temporary path and renamed into place.

Checkpoints are crash-safe (a ``SIGKILL`` or power loss at any instant leaves a
complete checkpoint named). For a model directory ``out``:

* ``out.ckpt.d/step-NNNNNNNN/`` holds one complete checkpoint
  (``model.safetensors``, ``optimizer.pt``, and ``meta.json`` with the SHA-256 of
  both). It is written as ``out.ckpt.d/tmp-NNNNNNNN/``, every file and the
  directory are fsynced, and only then is it renamed to its ``step-`` name: a
  ``step-`` directory is complete by construction.
* ``out.ckpt`` is a relative symlink to the current one (so ``out.ckpt/meta.json``
  and ``out.ckpt/model.safetensors`` read as before). A new checkpoint is made
  current by renaming a fresh symlink over it (``os.replace``, atomic), and the
  previous one is deleted only after that.
* On resume, [`find_checkpoint`][attrib.shapes.train.find_checkpoint] takes the
  checkpoint the symlink names; with no (or a dangling) symlink, the newest
  ``step-`` directory; then a legacy directory checkpoint written before this
  layout. Stray temporary and superseded directories are deleted.
  [`load_checkpoint`][attrib.shapes.train.load_checkpoint] checks the recorded
  SHA-256 sums, so a damaged checkpoint is refused, never resumed from.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import safetensors.torch
import torch
import transformers
from transformers import Qwen2_5_VLForConditionalGeneration

from attrib.shapes.dataset import BENCHMARK_VERSION, Example, make_example
from attrib.shapes.fastpath import vision_fast_path
from attrib.shapes.model import ModelSize, build_config
from attrib.shapes.pointing import pointing_trace
from attrib.shapes.processor import ShapesProcessor, token_id
from attrib.shapes.questions import AUX_FAMILIES
from attrib.shapes.scene import Difficulty
from attrib.shapes.vocab import benchmark_words
from attrib.variants.pointcopy.model import COPY, COPY_TOKENS, PointCopyModel

__all__ = [
    "V2_CANVAS_CYCLE",
    "V2_SCHEDULE",
    "TrainConfig",
    "TrainResult",
    "cpu_model",
    "find_checkpoint",
    "load_checkpoint",
    "lr_at",
    "new_model",
    "pointing_batch",
    "remove_checkpoint",
    "save_checkpoint",
    "set_generation_defaults",
    "step_batch",
    "step_canvas",
    "step_difficulty",
    "step_examples",
    "train",
    "weight_digest",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Training hyper-parameters (the defaults produce the bundled model).

    Attributes:
        steps: Optimiser steps.
        batch_size: Examples per step.
        lr: Peak learning rate (AdamW).
        warmup: Linear warm-up steps; cosine decay to 10 % afterwards.
        weight_decay: AdamW weight decay.
        seed: Model initialisation seed.
        benchmark_seed: Benchmark seed of the training split.
        threads: torch CPU threads (part of the determinism contract).
        size: Architecture.
        difficulty: Scene difficulty of the training data.
        ckpt_every: Steps between resumable checkpoints (0 disables).
        aux_share: Share of each batch drawn from the auxiliary ``inventory``
            family (list every object, then count), for dense grounding supervision.
        variant: ``"base"`` (plain Qwen2.5-VL) or ``"v1"`` (point-and-copy heads
            on the same base, trained on the same examples with pointing traces,
            see [`attrib.shapes.pointing`][attrib.shapes.pointing]).
        workers: Processes that build the next batches while the current step
            runs (0 builds them in-process). Batches are a pure function of the
            step, so this does not change the result.
        compile: ``torch.compile`` the vision blocks and text decoder layers
            (inductor; needs a C++ compiler, about a minute to compile). The
            compiled kernels round differently from eager ones, so a run and
            its resume must agree on this flag.
        benchmark: The training data: ``"shapes"`` (benchmark v1, the default) or ``"shapes2"``
            (benchmark v2, see [`attrib.shapes.v2`][attrib.shapes.v2]; each step's examples share one canvas
            of the v2 mix, see [`step_canvas`][attrib.shapes.train.step_canvas]).
        curriculum: Benchmark v2 only: the first ``curriculum`` steps train on 224x224 scenes of
            ``curriculum_min_objects .. curriculum_max_objects`` objects (short traces, cheap steps) before
            the canvas mix of [`step_canvas`][attrib.shapes.train.step_canvas] starts; 0 disables.
        curriculum_min_objects: Fewest objects of a curriculum scene.
        curriculum_max_objects: Most objects of a curriculum scene.
        flush_denormal: Flush denormal floats to zero during training
            (``torch.set_flush_denormal``). Late in training, sharp attention and
            small gradients produce denormals, which x86 CPUs compute tens of
            times slower: measured on the bundled recipe, a step at step 4,000 took
            0.85 s against 0.73 s with flushing (0.66 s at step 750).
    """

    steps: int = 5000
    batch_size: int = 16
    lr: float = 2e-3
    warmup: int = 200
    weight_decay: float = 0.01
    seed: int = 0
    benchmark_seed: int = 0
    threads: int = 2
    size: ModelSize = field(default_factory=ModelSize)
    difficulty: Difficulty = field(default_factory=Difficulty)
    ckpt_every: int = 250
    aux_share: float = 0.25
    variant: str = "base"
    workers: int = 1
    compile: bool = True
    flush_denormal: bool = True
    benchmark: str = "shapes"
    curriculum: int = 0
    curriculum_min_objects: int = 2
    curriculum_max_objects: int = 5

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if not 0 <= self.aux_share < 1:
            raise ValueError(f"aux_share must be in [0, 1), got {self.aux_share}")
        if self.variant not in ("base", "v1"):
            raise ValueError(f"variant must be 'base' or 'v1', got {self.variant!r}")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if self.benchmark not in ("shapes", "shapes2"):
            raise ValueError(f"benchmark must be 'shapes' or 'shapes2', got {self.benchmark!r}")
        if self.benchmark == "shapes2" and self.aux_share:
            raise ValueError("benchmark 'shapes2' trains without auxiliary examples (aux_share=0)")
        if self.curriculum < 0 or not 1 <= self.curriculum_min_objects <= self.curriculum_max_objects:
            raise ValueError(
                f"curriculum must be >= 0 and 1 <= curriculum_min_objects <= curriculum_max_objects, got "
                f"{self.curriculum}, {self.curriculum_min_objects}, {self.curriculum_max_objects}"
            )
        if self.curriculum and self.benchmark != "shapes2":
            raise ValueError("a curriculum is part of the benchmark v2 recipe only (benchmark='shapes2')")

    @classmethod
    def v2(cls, **overrides: Any) -> TrainConfig:
        """The recipe of the v2 model: benchmark v2, [`ModelSize.v2`][attrib.shapes.model.ModelSize.v2], its schedule.

        ``torch.compile`` is off: with four canvas sizes the statically compiled vision blocks exceed
        Dynamo's recompilation limit, and measured on the 2-core machine the compiled steps were no
        faster than eager ones (224x224 0.88 s vs 0.87 s, 448x448 2.88 s vs 2.84 s per step of 16).

        Args:
            **overrides: Fields to change (``steps``, ``batch_size``, ``seed``, ``threads``, ...).
        """
        from attrib.shapes.v2.scene import preset

        base: dict[str, Any] = {
            "benchmark": "shapes2",
            "size": ModelSize.v2(),
            "difficulty": preset("medium"),
            "aux_share": 0.0,
            "compile": False,
            **V2_SCHEDULE,
        }
        return cls(**(base | overrides))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["benchmark_version"] = BENCHMARK_VERSION if self.benchmark == "shapes" else _v2_version()
        d["size"] = self.size.to_dict()
        d["difficulty"] = self.difficulty.to_dict()
        return d


@dataclass
class TrainResult:
    """What [`train`][attrib.shapes.train.train] returns.

    Attributes:
        out_dir: The saved model directory.
        seconds: Wall time of this call (resumed work excluded).
        losses: ``(step, loss)`` pairs logged.
        resumed_from: Step the run resumed from (0 for a fresh run).
    """

    out_dir: Path
    seconds: float
    losses: list[tuple[int, float]]
    resumed_from: int = 0


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate at ``step``: linear warm-up, then cosine decay to a tenth."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


_AUX_OFFSET = 500_000_000
#: The schedule of the v2 recipe ([`TrainConfig.v2`][attrib.shapes.train.TrainConfig.v2]): 2,000 curriculum steps
#: (224x224, 2-5 objects, 0.74 s each on the 2-core machine), then 2,500 steps of the canvas mix (1.67 s mean).
#: Without the curriculum the model stayed blind: 600 mix steps (17 min) left the loss on a plateau (0.53) and
#: colour, shape and size at chance under teacher forcing; with it, 2,500 steps (38 min) read colour 0.87, size
#: 0.85 and the first position word 0.79 under teacher forcing on shapes2:test (shape 0.38: not yet).
V2_SCHEDULE: dict[str, Any] = {"steps": 4500, "batch_size": 16, "lr": 2e-3, "warmup": 200, "curriculum": 2000}
#: Canvases of successive training steps of benchmark v2 (the cycle repeats): 224x224 on two steps in five,
#: each of the others on one, as in the v2 mix.
V2_CANVAS_CYCLE: tuple[tuple[int, int], ...] = ((224, 224), (448, 280), (224, 224), (280, 448), (448, 448))


def _v2_version() -> int:
    from attrib.shapes.v2.dataset import BENCHMARK_VERSION as V2_VERSION

    return V2_VERSION


def step_canvas(cfg: TrainConfig, step: int) -> tuple[int, int] | None:
    """The canvas ``(width, height)`` every example of ``step`` has (``None`` for benchmark v1: 224x224).

    Benchmark v2: 224x224 during the curriculum (``cfg.curriculum`` steps), then
    `V2_CANVAS_CYCLE` from its start.
    """
    if cfg.benchmark == "shapes":
        return None
    if step < cfg.curriculum:
        return (224, 224)
    return V2_CANVAS_CYCLE[(step - cfg.curriculum) % len(V2_CANVAS_CYCLE)]


def step_difficulty(cfg: TrainConfig, step: int) -> Difficulty:
    """The scene difficulty of ``step``: ``cfg.difficulty``, with the curriculum's object counts in the curriculum."""
    if step < cfg.curriculum:
        d = cfg.difficulty.to_dict() | {
            "min_objects": cfg.curriculum_min_objects,
            "max_objects": cfg.curriculum_max_objects,
        }
        return Difficulty.from_dict(d)
    return cfg.difficulty


def step_examples(cfg: TrainConfig, step: int) -> list[Example]:
    """The training examples of ``step`` (the same for every variant)."""
    if cfg.benchmark == "shapes2":
        from attrib.shapes.v2.dataset import make_example as make_example2

        canvas = step_canvas(cfg, step)
        difficulty = step_difficulty(cfg, step)
        b = cfg.batch_size
        return [
            make_example2(
                "train", step * b + j, benchmark_seed=cfg.benchmark_seed, difficulty=difficulty, canvas=canvas
            )
            for j in range(b)
        ]
    n_aux = round(cfg.batch_size * cfg.aux_share)
    n_reg = cfg.batch_size - n_aux
    kw: dict[str, Any] = {"benchmark_seed": cfg.benchmark_seed, "difficulty": cfg.difficulty}
    exs = [make_example("train", step * n_reg + j, **kw) for j in range(n_reg)]
    exs += [
        make_example("train", _AUX_OFFSET + step * n_aux + j, families=sorted(AUX_FAMILIES), **kw) for j in range(n_aux)
    ]
    return exs


def step_batch(processor: ShapesProcessor, cfg: TrainConfig, step: int) -> dict[str, torch.Tensor]:
    """The model inputs of training step ``step`` (with v1 pointing traces for the v1 variant)."""
    exs = step_examples(cfg, step)
    if cfg.variant == "v1":
        return pointing_batch(processor, exs)
    return processor([e.image() for e in exs], [e.question.text for e in exs], [e.target_text() for e in exs])


def pointing_batch(processor: ShapesProcessor, examples: list[Example]) -> dict[str, torch.Tensor]:
    """A teacher-forcing batch of point-and-copy traces: ``copy_src`` and joint ``labels`` added.

    Raises:
        ValueError: If the processor lacks ``<|copy|>`` or a trace's copies do not line up.
    """
    traces = [pointing_trace(e) for e in examples]
    batch = processor([e.image() for e in examples], [e.question.text for e in examples], [t for t, _ in traces])
    copy_id = processor.tokenizer.convert_tokens_to_ids(COPY)
    if not isinstance(copy_id, int) or copy_id == processor.tokenizer.unk_token_id:
        raise ValueError("the processor has no <|copy|> token; build it with extra_special=COPY_TOKENS")
    ids = batch["input_ids"]
    copy_src = torch.full_like(ids, -1)
    for i, (_, src) in enumerate(traces):
        where = torch.nonzero(ids[i] == copy_id).flatten()
        if where.numel() != len(src):
            raise ValueError(f"trace {examples[i].uid}: {where.numel()} copy tokens but {len(src)} sources")
        copy_src[i, where] = torch.tensor(src, dtype=torch.long)
    labels = batch["labels"].clone()
    cp = copy_src >= 0
    labels[cp] = len(processor.tokenizer) + copy_src[cp]
    batch["copy_src"] = copy_src
    batch["labels"] = labels
    return batch


def new_model(cfg: TrainConfig) -> tuple[torch.nn.Module, ShapesProcessor]:
    """A freshly initialised model of ``cfg.variant`` (seeded by ``cfg.seed``) and its processor."""
    torch.manual_seed(cfg.seed)
    if cfg.benchmark == "shapes2":
        from attrib.shapes.v2.dataset import benchmark_words as benchmark_words2

        words = benchmark_words2()
    else:
        words = benchmark_words()
    if cfg.variant == "v1":  # the same base and words, with the copy tokens and the point-and-copy heads
        processor = ShapesProcessor.create(words, extra_special=COPY_TOKENS)
        base = Qwen2_5_VLForConditionalGeneration(build_config(processor, cfg.size))
        return PointCopyModel(base, token_id(processor.tokenizer, COPY), keys="hidden"), processor
    processor = ShapesProcessor.create(words)
    return Qwen2_5_VLForConditionalGeneration(build_config(processor, cfg.size)), processor


def _hf(model: torch.nn.Module) -> Any:
    return model.base if isinstance(model, PointCopyModel) else model


class _StepBatches(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Batch ``i`` is the training batch of step ``start + i`` (a pure function of the step)."""

    def __init__(self, processor: ShapesProcessor, cfg: TrainConfig, start: int) -> None:
        self.processor, self.cfg, self.start = processor, cfg, start

    def __len__(self) -> int:
        return self.cfg.steps - self.start

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return step_batch(self.processor, self.cfg, self.start + i)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _prefetched(processor: ShapesProcessor, cfg: TrainConfig, start: int) -> Iterator[dict[str, torch.Tensor]]:
    """Step batches in order, built one step ahead by a worker process (in-process when ``cfg.workers`` is 0)."""
    ds = _StepBatches(processor, cfg, start)
    if cfg.workers == 0:
        return (ds[i] for i in range(len(ds)))
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, shuffle=False, num_workers=cfg.workers, prefetch_factor=2, worker_init_fn=_worker_init
    )
    return iter(loader)


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    on_step: Callable[[int, int, float], None] | None = None,
    log_every: int = 25,
) -> TrainResult:
    """Train a model and save it (weights, config, processor, ``train_log.json``) to ``out_dir``.

    Args:
        cfg: Hyper-parameters.
        out_dir: Final model directory (replaced atomically when training ends).
        on_step: Called as ``on_step(step, total, loss)`` after every step (progress bars).
        log_every: Steps between logged losses.

    Returns:
        A [`TrainResult`][attrib.shapes.train.TrainResult].
    """
    if cfg.flush_denormal:
        torch.set_flush_denormal(True)  # before the thread pool starts, so its threads inherit it
    try:
        return _train(cfg, out_dir, on_step=on_step, log_every=log_every)
    finally:
        if cfg.flush_denormal:
            torch.set_flush_denormal(False)


def _train(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    on_step: Callable[[int, int, float], None] | None,
    log_every: int,
) -> TrainResult:
    out = Path(out_dir)
    ckpt = out.with_name(out.name + ".ckpt")
    torch.set_num_threads(cfg.threads)
    model, processor = new_model(cfg)
    model.train()
    if cfg.compile:
        for blk in _hf(model).model.visual.blocks:
            blk.compile(dynamic=False)
        for layer in _hf(model).model.language_model.layers:
            layer.compile(dynamic=True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    start, losses, prior_seconds, digests = _maybe_resume(ckpt, cfg, model, opt)
    t0 = time.perf_counter()
    batches = _prefetched(processor, cfg, start)
    step_seconds: dict[str, list[float]] = {}
    with vision_fast_path(model):
        for step in range(start, cfg.steps):
            ts = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            batch = next(batches)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise RuntimeError(f"training diverged at step {step}: loss={lv}")
            if step % log_every == 0 or step == cfg.steps - 1:
                losses.append((step, lv))
                logger.info("step %d/%d loss %.4f", step, cfg.steps, lv)
            canvas = step_canvas(cfg, step) or (224, 224)
            key = f"{canvas[0]}x{canvas[1]}" + ("-curriculum" if step < cfg.curriculum else "")
            step_seconds.setdefault(key, []).append(time.perf_counter() - ts)
            if on_step is not None:
                on_step(step + 1, cfg.steps, lv)
            if cfg.ckpt_every and (step + 1) % cfg.ckpt_every == 0 and step + 1 < cfg.steps:
                _save_ckpt(ckpt, cfg, model, opt, step + 1, losses, prior_seconds + time.perf_counter() - t0, digests)
    seconds = time.perf_counter() - t0
    model.eval()
    set_generation_defaults(_hf(model), processor)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cast(Any, model).save_pretrained(tmp)
    processor.save_pretrained(tmp, dataset=f"{cfg.benchmark}:test")
    log = {
        "config": cfg.to_dict(),
        "losses": losses,
        "train_seconds": prior_seconds + seconds,
        "step_seconds": _step_timing(step_seconds),
        "checkpoint_digests": digests,
        "final_digest": weight_digest(model),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": cpu_model(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (tmp / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    _fsync_tree(tmp)
    _checkpoint_hook("final:written")
    # Until the checkpoint is removed below, a kill anywhere here resumes from it and rewrites ``out``.
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    _fsync_dir(out.parent)
    _checkpoint_hook("final:replaced")
    shutil.rmtree(old, ignore_errors=True)
    remove_checkpoint(ckpt)
    return TrainResult(out_dir=out, seconds=seconds, losses=losses, resumed_from=start)


def _step_timing(step_seconds: Mapping[str, list[float]], skip: int = 2) -> dict[str, Any]:
    """Median seconds per step of this call, per canvas (the first ``skip`` steps of each left out: warm-up).

    What a projection of a longer run's time is read from (``train_log.json``'s ``step_seconds``).
    """
    out: dict[str, Any] = {}
    for canvas, ts in sorted(step_seconds.items()):
        kept = ts[skip:] if len(ts) > skip else ts
        out[canvas] = {"steps": len(ts), "median_s": float(sorted(kept)[len(kept) // 2])}
    return out


def set_generation_defaults(model: Qwen2_5_VLForConditionalGeneration, processor: ShapesProcessor) -> None:
    """Greedy decoding that stops at ``<|im_end|>``, so a plain ``model.generate(**inputs)`` works."""
    gc = model.generation_config
    gc.eos_token_id = int(processor.tokenizer.eos_token_id)
    gc.pad_token_id = int(processor.tokenizer.pad_token_id)
    gc.do_sample = False
    gc.max_new_tokens = 200


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` where there is one), recorded beside the weight digests:
    floating-point results, and so the digests, can differ between CPUs and library versions."""
    import platform

    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    return platform.processor() or platform.machine()


def weight_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer, in ``state_dict`` order (a bitwise reproducibility check)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def _save_ckpt(
    ckpt: Path,
    cfg: TrainConfig,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    step: int,
    losses: list[tuple[int, float]],
    seconds: float,
    digests: list[tuple[int, str]],
) -> None:
    digests.append((step, weight_digest(model)))
    meta = {"step": step, "config": cfg.to_dict(), "losses": losses, "seconds": seconds, "digests": digests}
    save_checkpoint(ckpt, step, model.state_dict(), opt.state_dict(), meta)
    logger.info("checkpoint at step %d, weights sha256 %s", step, digests[-1][1][:16])


def _maybe_resume(
    ckpt: Path, cfg: TrainConfig, model: torch.nn.Module, opt: torch.optim.Optimizer
) -> tuple[int, list[tuple[int, float]], float, list[tuple[int, str]]]:
    where = find_checkpoint(ckpt)
    if where is None:
        return 0, [], 0.0, []
    meta = json.loads((where / "meta.json").read_text())
    mine = json.loads(json.dumps(cfg.to_dict()))
    theirs = dict(meta["config"])
    mine.pop("workers", None)  # batches are a pure function of the step: not part of the identity
    theirs.pop("workers", None)
    theirs.setdefault("variant", "base")  # checkpoints written before the v1 variant existed
    theirs.setdefault("benchmark", "shapes")  # ... and before benchmark v2
    for k in ("curriculum", "curriculum_min_objects", "curriculum_max_objects"):  # ... and before the curriculum
        theirs.setdefault(k, getattr(TrainConfig, k))
    theirs.get("size", {}).setdefault("rope_theta", ModelSize().rope_theta)  # ... and before a choice of rotary base
    if theirs != mine:
        raise ValueError(f"checkpoint {ckpt} was written with a different training config; delete it to start afresh")
    state, opt_state = load_checkpoint(where)
    model.load_state_dict(state, strict=True)
    opt.load_state_dict(opt_state)
    step = int(meta["step"])
    digests = [(int(a), str(b)) for a, b in meta.get("digests", [])]
    if digests and digests[-1][0] == step and weight_digest(model) != digests[-1][1]:
        raise ValueError(f"checkpoint {where}: the weights do not match their recorded digest; delete {ckpt}")
    logger.info("resuming from step %d (%s)", step, where)
    return step, [tuple(x) for x in meta["losses"]], float(meta["seconds"]), digests


# Crash-safe checkpoints (the layout is described in the module docstring).

_STEP_DIR = re.compile(r"step-(\d+)")
_CKPT_FILES = ("model.safetensors", "optimizer.pt")
# The points at which ``_checkpoint_hook`` is called, in order.
_CHECKPOINT_STAGES = (
    "save:begin",
    "save:model",
    "save:synced",
    "save:renamed",
    "save:switched",
    "save:done",
    "final:written",
    "final:replaced",
    "remove:unlinked",
)


def _checkpoint_hook(stage: str) -> None:
    """Fault-injection seam for tests; does nothing.

    Called with each name of ``_CHECKPOINT_STAGES`` as checkpoint saving
    (``save:*``), the final write of [`train`][attrib.shapes.train.train]
    (``final:*``) and checkpoint removal (``remove:*``) pass that point.
    ``tests/test_train_resume.py`` replaces this module attribute, in a child
    process only, with a function that SIGKILLs the process at a chosen stage.
    Nothing in the library sets it.
    """


def _store(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + ".d")


def _fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames) durable; a no-op where directories cannot be opened."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _write_synced(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path``, fsync it, and return its SHA-256."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def _discard(path: Path) -> None:
    """Delete a file, symlink or directory; a directory is first renamed to ``<name>.trash``.

    So a deletion cut short never leaves a half-deleted directory under a name that is resumed from.
    """
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        if not path.name.endswith(".trash"):
            trash = path.with_name(path.name + ".trash")
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(path, trash)
            path = trash
        shutil.rmtree(path)


def _step_of(path: Path) -> int:
    m = _STEP_DIR.fullmatch(path.name)
    return int(m.group(1)) if m else -1


def _linked(ckpt: Path) -> Path | None:
    """The complete ``step-`` directory that the ``ckpt`` symlink names, if any."""
    if not ckpt.is_symlink():
        return None
    target = _store(ckpt) / Path(os.readlink(ckpt)).name
    return target if _step_of(target) >= 0 and (target / "meta.json").is_file() else None


def _current(ckpt: Path) -> Path | None:
    """The linked ``step-`` directory; failing that, the newest one (each is complete by construction)."""
    linked = _linked(ckpt)
    if linked is not None:
        return linked
    store = _store(ckpt)
    steps = [p for p in store.iterdir() if _step_of(p) >= 0 and (p / "meta.json").is_file()] if store.is_dir() else []
    return max(steps, key=_step_of) if steps else None


def _point(ckpt: Path, target: Path) -> None:
    """Atomically make the ``ckpt`` symlink name ``target`` (a directory of ``ckpt``'s store)."""
    link = ckpt.with_name(ckpt.name + ".newlink")
    link.unlink(missing_ok=True)
    os.symlink(os.path.join(_store(ckpt).name, target.name), link)
    if ckpt.is_dir() and not ckpt.is_symlink():
        _discard(ckpt)  # a legacy directory checkpoint, superseded by ``target``
    os.replace(link, ckpt)
    _fsync_dir(ckpt.parent)


def _legacy(ckpt: Path) -> Path | None:
    """A directory checkpoint written before the store layout (``ckpt`` itself, or the ``.tmp`` it was built in)."""
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if all((tmp / n).is_file() for n in ("meta.json", *_CKPT_FILES)):
        return tmp  # complete (meta.json was written last) and newer than ``ckpt``, which it was about to replace
    if ckpt.is_dir() and not ckpt.is_symlink() and (ckpt / "meta.json").is_file():
        return ckpt
    return None


def _tidy(ckpt: Path, keep: Path | None) -> None:
    """Delete every stray entry of the store and every stray sibling of ``ckpt`` (never ``keep``)."""
    store = _store(ckpt)
    if store.is_dir():
        for p in store.iterdir():
            if p != keep:
                _discard(p)
        if keep is None:
            store.rmdir()
    strays = [".newlink", ".trash", ".tmp.trash", ".d.trash"]
    if keep is not None:
        strays.append(".tmp")  # a legacy checkpoint, superseded
    for suffix in strays:
        _discard(ckpt.with_name(ckpt.name + suffix))
    if keep is None and ckpt.is_symlink():
        ckpt.unlink()  # dangling


def find_checkpoint(ckpt: str | Path) -> Path | None:
    """The directory of the checkpoint to resume from, deleting what an interrupted run left behind.

    Args:
        ckpt: The checkpoint name (``<model dir>.ckpt``).

    Returns:
        The directory holding the checkpoint's ``meta.json``, or ``None`` when there is none: the
        ``step-`` directory that ``ckpt`` links to; with no valid link, the newest ``step-`` directory
        of the store (which is then linked); failing both, a legacy directory checkpoint. Temporary,
        superseded and half-deleted directories are deleted, and so is a dangling link.
    """
    ckpt = Path(ckpt)
    current = _current(ckpt)
    if current is not None:
        if _linked(ckpt) != current:
            _point(ckpt, current)
        _tidy(ckpt, current)
        return current
    legacy = _legacy(ckpt)
    _tidy(ckpt, None)
    return legacy


def save_checkpoint(
    ckpt: str | Path,
    step: int,
    model_state: Mapping[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    meta: dict[str, Any],
) -> Path:
    """Write a checkpoint and make it the current one, crash-safely.

    The files are written to a temporary directory of the store and fsynced, the
    directory is renamed to ``step-<step>``, the ``ckpt`` symlink is switched to it
    atomically, and only then are older checkpoints deleted: at every instant a
    complete checkpoint is named.

    Args:
        ckpt: The checkpoint name (``<model dir>.ckpt``).
        step: Training steps done.
        model_state: Weights (saved as ``model.safetensors``).
        optimizer_state: Optimizer state (saved as ``optimizer.pt``, read back with ``weights_only``).
        meta: JSON-ready metadata, saved as ``meta.json`` with ``step`` and the files' SHA-256 added.

    Returns:
        The new checkpoint directory.

    Raises:
        ValueError: If ``step`` is the current checkpoint's step (it cannot be replaced in place).
    """
    ckpt = Path(ckpt)
    store = _store(ckpt)
    final = store / f"step-{step:08d}"
    if _current(ckpt) == final:
        raise ValueError(f"checkpoint {final} is the current one and cannot be overwritten")
    _checkpoint_hook("save:begin")
    if not store.is_dir():
        store.mkdir(parents=True)
        _fsync_dir(store.parent)
    tmp = store / f"tmp-{step:08d}"
    _discard(tmp)
    tmp.mkdir()
    tensors = {k: v.detach().clone().contiguous() for k, v in model_state.items()}
    files = {"model.safetensors": _write_synced(tmp / "model.safetensors", safetensors.torch.save(tensors))}
    _checkpoint_hook("save:model")
    buf = io.BytesIO()
    torch.save(optimizer_state, buf)
    files["optimizer.pt"] = _write_synced(tmp / "optimizer.pt", buf.getvalue())
    _write_synced(tmp / "meta.json", (json.dumps({**meta, "step": step, "files": files}) + "\n").encode())
    _fsync_dir(tmp)
    _checkpoint_hook("save:synced")
    _discard(final)  # a complete one that a killed run never made current
    os.replace(tmp, final)
    _fsync_dir(store)
    _checkpoint_hook("save:renamed")
    _point(ckpt, final)
    _checkpoint_hook("save:switched")
    _tidy(ckpt, final)
    _checkpoint_hook("save:done")
    return final


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint directory found by [`find_checkpoint`][attrib.shapes.train.find_checkpoint].

    Args:
        path: The checkpoint directory.

    Returns:
        ``(model_state, optimizer_state)``; the optimizer state is read with ``weights_only=True``.

    Raises:
        ValueError: If a file does not match the SHA-256 recorded in ``meta.json`` (legacy
            checkpoints record none).
        FileNotFoundError: If a file is missing.
    """
    path = Path(path)
    recorded = json.loads((path / "meta.json").read_text()).get("files", {})
    data = {}
    for name in _CKPT_FILES:
        data[name] = (path / name).read_bytes()
        if name in recorded and hashlib.sha256(data[name]).hexdigest() != recorded[name]:
            raise ValueError(f"checkpoint {path}: {name} does not match its recorded SHA-256; delete it to start over")
    model_state = safetensors.torch.load(data["model.safetensors"])
    optimizer_state = torch.load(io.BytesIO(data["optimizer.pt"]), weights_only=True)
    return model_state, optimizer_state


def remove_checkpoint(ckpt: str | Path) -> None:
    """Delete a checkpoint: first its name (so an interruption leaves nothing half-deleted named), then its files.

    Args:
        ckpt: The checkpoint name (``<model dir>.ckpt``).
    """
    ckpt = Path(ckpt)
    if ckpt.is_symlink():
        ckpt.unlink()
        _fsync_dir(ckpt.parent)
    elif ckpt.is_dir():
        _discard(ckpt)
    _checkpoint_hook("remove:unlinked")
    for suffix in (".d", ".tmp", ".newlink", ".trash", ".tmp.trash", ".d.trash"):
        _discard(ckpt.with_name(ckpt.name + suffix))
