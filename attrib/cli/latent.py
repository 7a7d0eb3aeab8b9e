"""``attrib latent``: capacity-guided selection, fine-tuning and intervention probing of latent variants.

Every subcommand that draws examples or loads a model runs on the benchmark its model was made for
([`model_benchmark`][attrib.shapes.model.model_benchmark]): benchmark v1 (``shapes:``) for
``shapes-qwen25vl``, the default base, and models made from it; benchmark v2 (``shapes2:``) for
``shapes2-qwen25vl`` and models made from it. ``--benchmark`` names the benchmark a command must run on: it
picks the bundled base of that benchmark when ``--base`` is not given, and a model, selection or estimator
of another benchmark is refused before any work starts.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.table import Table

from attrib.cli.console import console, out, progress, split_choices

__all__ = ["register"]


def _add_benchmark(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--benchmark",
        default=None,
        choices=["shapes", "shapes2"],
        help=f"the benchmark to run on: shapes (v1: shapes:<split> examples) or shapes2 (v2: shapes2:<split>, the "
        f"bundled model's); default: {what}'s. A model or selection of the other benchmark is refused",
    )


def register(sub: Any) -> None:
    """Add ``latent select``, ``latent train``, ``latent probe``, ``latent attribution`` and ``latent table``."""
    p = sub.add_parser(
        "latent",
        help="latent-visual-token variants (GAP): select, train, probe (on the base model's benchmark, v1 or v2)",
    )
    ls = p.add_subparsers(dest="latent_command", required=True)

    s = ls.add_parser("select", help="base sampled accuracy on the training pool (capacity-guided selection)")
    s.add_argument(
        "--base",
        default=None,
        help="bundled name or directory of the base model; the pool is drawn from its benchmark (default: the "
        "bundled model of --benchmark, shapes2-qwen25vl for shapes2; without --benchmark, shapes-qwen25vl, "
        "the benchmark-v1 model)",
    )
    _add_benchmark(s, "the base model")
    s.add_argument(
        "--pool-start", type=int, default=0, help="first training example of the pool (of the benchmark's train split)"
    )
    s.add_argument("--pool-n", type=int, default=800, help="training examples in the pool")
    s.add_argument("--samples", type=int, default=4, help="sampled answers per example (temperature 1)")
    s.add_argument("--seed", type=int, default=0, help="sampling seed")
    s.add_argument("--batch-size", type=int, default=32, help="examples per generate call")
    s.add_argument("--threads", type=int, default=2, help="torch threads")
    s.add_argument("--out", required=True, help="selection JSON to write")
    s.set_defaults(fn=_cmd_select)

    t = ls.add_parser("train", help="fine-tune one latent variant from the base model")
    t.add_argument(
        "--base",
        default=None,
        help="bundled name or directory of the base model, of the selection's benchmark (default: the bundled "
        "model of --benchmark, else of the selection's benchmark: shapes-qwen25vl for v1, shapes2-qwen25vl for v2)",
    )
    _add_benchmark(t, "the base model")
    t.add_argument(
        "--selection",
        required=True,
        help="JSON written by `attrib latent select` (on the same benchmark as the base model)",
    )
    t.add_argument(
        "--mode",
        required=True,
        choices=["raw", "ema", "pca"],
        help="what a latent feeds back: the hidden state, EMA-norm-calibrated, or the PCA-aligned head",
    )
    t.add_argument("--seed", type=int, default=0, help="training seed")
    t.add_argument("--steps", type=int, default=None, help="optimiser steps (default: LatentConfig's)")
    t.add_argument("--batch-size", type=int, default=None, help="examples per step (default: LatentConfig's)")
    t.add_argument(
        "--tau", type=float, default=None, help="latents where the base's sampled accuracy <= tau (default 0.5)"
    )
    t.add_argument("--pool-n", type=int, default=None, help="training pool size (default: LatentConfig's)")
    t.add_argument("--threads", type=int, default=2, help="torch threads")
    t.add_argument("--out", required=True, help="latent-variant directory to write")
    t.set_defaults(fn=_cmd_train)

    e = ls.add_parser("probe", help="accuracy unchanged and with latents replaced (zeros, noise, mean, shuffle)")
    e.add_argument("--model", required=True, help="a latent-variant directory")
    e.add_argument("--split", default="test", choices=split_choices, help="split of the model's benchmark")
    _add_benchmark(e, "the latent model")
    e.add_argument("--n", type=int, default=200, help="examples")
    e.add_argument("--start", type=int, default=0, help="first example")
    e.add_argument(
        "--interventions", default="zeros,noise,mean,shuffle", help="comma-separated latent replacements to probe"
    )
    e.add_argument("--norms-n", type=int, default=16, help="examples for the layer-wise norm table (0: skip)")
    e.add_argument("--batch-size", type=int, default=32, help="examples per generate call")
    e.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="generation budget per example, latent positions included (default: the benchmark's, "
        "v1 240, v2 340 with 4 latents per block)",
    )
    e.add_argument("--threads", type=int, default=2, help="torch threads")
    e.add_argument("--json", default=None, help="write the results here")
    e.set_defaults(fn=_cmd_probe)

    a = ls.add_parser("attribution", help="per span, the share of attribution through latents vs image tokens")
    a.add_argument("--model", required=True, help="a latent-variant directory")
    a.add_argument(
        "--estimator",
        default=None,
        help="L x H estimator weighting the share: a path stem, or 'bundled' for the bundled estimator of the "
        "model's benchmark (its base's; default: uniform)",
    )
    a.add_argument("--split", default="test", choices=split_choices, help="split of the model's benchmark")
    _add_benchmark(a, "the latent model")
    a.add_argument("--n", type=int, default=30, help="examples")
    a.add_argument("--start", type=int, default=0, help="first example")
    a.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="generation budget per example, latent positions included (default: v1 256, v2 340)",
    )
    a.add_argument("--threads", type=int, default=2, help="torch threads")
    a.add_argument("--json", default=None, help="write the results here")
    a.set_defaults(fn=_cmd_attribution)

    tb = ls.add_parser("table", help="the side-by-side table of modes across seeds, from probe JSONs")
    tb.add_argument("results", nargs="+", help="probe JSON files (all of one benchmark)")
    tb.add_argument("--json", default=None, help="write the table here")
    tb.set_defaults(fn=_cmd_table)


def _base(name: str | None) -> Path:
    from attrib.models.loading import resolve_path

    p = resolve_path(name)
    if not isinstance(p, Path):
        raise ValueError(f"{name!r} is not a bundled model or a local directory")
    return p


def _benchmark_of(path: Path, wanted: str | None, what: str) -> str:
    """The benchmark the model at ``path`` was made for, refusing another than ``wanted`` (when given)."""
    from attrib.shapes.model import model_benchmark

    bench = model_benchmark(path)
    if wanted is not None and wanted != bench:
        raise ValueError(
            f"{what} {path} was made for benchmark {bench!r}, not {wanted!r} (--benchmark): "
            f"use a {wanted!r} model or drop --benchmark"
        )
    return bench


def _base_for(args: argparse.Namespace, fallback: str) -> tuple[Path, str]:
    """The base model directory (``--base``, else the bundled one of ``--benchmark``, else of ``fallback``) and its
    benchmark."""
    from attrib.shapes.latent_train import BUNDLED_BASE

    base = _base(args.base or BUNDLED_BASE[args.benchmark or fallback])
    return base, _benchmark_of(base, args.benchmark, "the base model")


def _bar(desc: str, total: int) -> Any:
    prog = progress()
    return prog, prog.add_task(desc, total=total)


def _cmd_select(args: argparse.Namespace) -> int:
    import torch

    from attrib.shapes.latent_train import LatentConfig, pool, sample_budget, sampled_accuracy, save_selection
    from attrib.shapes.model import load_model

    base, bench = _base_for(args, "shapes")  # a mismatch is refused before any work
    torch.set_num_threads(args.threads)
    cfg = LatentConfig(pool_start=args.pool_start, pool_n=args.pool_n, benchmark=bench)
    model, proc = load_model(base)
    exs = pool(cfg)
    prog, task = _bar("sampling", len(exs) * args.samples)
    with prog:
        acc = sampled_accuracy(
            model,
            proc,
            exs,
            samples=args.samples,
            seed=args.seed,
            batch_size=args.batch_size,
            max_new_tokens=sample_budget(bench),
            on_progress=lambda d, t: prog.update(task, completed=d, total=t),
        )
    meta = {
        "base": str(base),
        "benchmark": bench,
        "samples": args.samples,
        "seed": args.seed,
        "pool_start": args.pool_start,
    }
    save_selection(args.out, exs, acc, meta)
    console.print(
        f"wrote {args.out} ({bench}:train {args.pool_start}-{args.pool_start + len(exs) - 1}): "
        f"mean sampled accuracy {acc.mean():.3f}; share <= 0.5: {(acc <= 0.5).mean():.3f}"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from attrib.shapes.latent_train import LatentConfig, load_selection, selection_benchmark, train_latent

    base, bench = _base_for(args, selection_benchmark(args.selection))
    sel = load_selection(args.selection, benchmark=bench)  # a selection of the other benchmark is refused
    over = {k: getattr(args, k) for k in ("steps", "batch_size", "tau", "pool_n") if getattr(args, k) is not None}
    cfg = LatentConfig(mode=args.mode, seed=args.seed, threads=args.threads, benchmark=bench, **over)
    prog, task = _bar("latent train", cfg.steps)
    with prog:
        log = train_latent(
            base,
            cfg,
            args.out,
            sel,
            on_step=lambda s, t, loss: prog.update(task, completed=s, description=f"latent train loss {loss:.3f}"),
        )
    console.print(
        f"saved {args.out} ({log['seconds']:.0f} s, {log['n_hard']}/{log['pool_n']} pool examples with latents)"
    )
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    import torch

    from attrib.io import atomic_write_json
    from attrib.shapes.latent_train import benchmark_examples, evaluate_latent, latent_budget, latent_norms, load_latent

    path = _base(args.model)
    bench = _benchmark_of(path, args.benchmark, "the latent model")
    torch.set_num_threads(args.threads)
    model, proc = load_latent(path)
    budget = args.max_new_tokens or latent_budget(bench, model.n_latent)
    exs = benchmark_examples(bench, args.split, args.n, args.start)
    kinds = [k for k in args.interventions.split(",") if k]
    prog, task = _bar("probe", len(exs) * (1 + len(kinds)))
    with prog:
        res = evaluate_latent(
            model,
            proc,
            exs,
            interventions=kinds,
            batch_size=args.batch_size,
            max_new_tokens=budget,
            on_progress=lambda d, t: prog.update(task, completed=d, total=t),
        )
    if args.norms_n:  # at least the 256 positions these traces always had (v1), the probe's budget on v2
        norms = latent_norms(model, proc, exs[: args.norms_n], name=str(path), max_new_tokens=max(256, budget))
        res["norms"] = norms.to_dict()
    res["model"] = str(path)
    res["benchmark"], res["dataset"], res["max_new_tokens"] = bench, f"{bench}:{args.split}", budget
    res["split"], res["start"] = args.split, args.start
    log = path / "latent_train_log.json"
    if log.is_file():
        import json

        res["train"] = {k: v for k, v in json.loads(log.read_text()).items() if k not in ("losses", "aux")}
    t = Table(title=f"latent probing: {path} ({res['mode']}, {bench}:{args.split}, n={res['n']})")
    for c in ("intervention", "accuracy", "delta", "95% CI"):
        t.add_column(c)
    for k, r in res["interventions"].items():
        t.add_row(
            k, f"{r['accuracy']:.3f}", f"{r['delta']:+.3f}", f"[{r['delta_ci'][0]:+.3f}, {r['delta_ci'][1]:+.3f}]"
        )
    out.print(t)
    nr = res["latent_norms"]
    out.print(
        f"latent norm {nr['latent_norm']:.3g}: {nr['ratio_to_image_input']:.3g}x the image input norm, "
        f"{nr['ratio_to_text_input']:.3g}x the text input norm"
    )
    if args.json:
        atomic_write_json(args.json, res)
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    import json

    from attrib.io import atomic_write_json
    from attrib.shapes.latent_train import seed_table

    by_mode: dict[str, list[dict[str, Any]]] = {}
    benches: dict[str, list[str]] = {}
    for f in args.results:
        r = json.loads(Path(f).read_text())
        by_mode.setdefault(r["mode"], []).append(r)
        benches.setdefault(str(r.get("benchmark", "shapes")), []).append(f)  # probes before v2 are v1's
    if len(benches) > 1:
        which = "; ".join(f"{b}: {', '.join(fs)}" for b, fs in sorted(benches.items()))
        raise ValueError(f"the probe results mix benchmarks ({which}); tabulate each benchmark on its own")
    table = {m: seed_table(rs) for m, rs in sorted(by_mode.items())}
    t = Table(title=f"latent variants across seeds ({next(iter(benches))})")
    cols = ["mode", "seeds", "accuracy (mean ± sd)", "latent/image input", "latent/text input"]
    kinds = sorted({k for v in table.values() for k in v if k.startswith("delta_")})
    for c in cols + kinds:
        t.add_column(c)
    for m, v in table.items():
        t.add_row(
            m,
            str(v["seeds"]),
            f"{v['accuracy_mean']:.3f} ± {v['accuracy_std']:.3f}",
            f"{v['ratio_to_image_input']:.3g}",
            f"{v['ratio_to_text_input']:.3g}",
            *[f"{v.get(k, float('nan')):+.3f}" for k in kinds],
        )
    out.print(t)
    if args.json:
        atomic_write_json(args.json, table)
    return 0


def _cmd_attribution(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from attrib.analysis.latent import latent_share
    from attrib.io import atomic_write_json
    from attrib.shapes.latent_train import benchmark_examples, latent_budget, load_latent

    path = _base(args.model)
    bench = _benchmark_of(path, args.benchmark, "the latent model")
    weights = None
    if args.estimator:
        from transformers import AutoConfig

        from estimators.linear import LinearHeadEstimator

        if args.estimator == "bundled":  # the bundled base of the model's benchmark ships its estimator
            from attrib.shapes.latent_train import BUNDLED_BASE
            from attrib.shapes.model import bundled_model_path

            args.estimator = str(bundled_model_path(BUNDLED_BASE[bench]) / "estimator")
        weights = np.asarray(LinearHeadEstimator.load(args.estimator).coef_, dtype=np.float64)
        # checked against the model's L x H before its weights load (a directory without base/ is no latent
        # model: load_latent refuses it below)
        text = AutoConfig.from_pretrained(path / "base").text_config if (path / "base").is_dir() else None
        dims = (int(text.num_hidden_layers), int(text.num_attention_heads)) if text is not None else weights.shape
        if weights.shape != dims:
            raise ValueError(
                f"estimator {args.estimator} weighs {' x '.join(map(str, weights.shape))} layers x heads but "
                f"{path} has {dims[0]} x {dims[1]}: use the estimator of its base model "
                "(--estimator bundled)"
            )
    torch.set_num_threads(args.threads)
    model, proc = load_latent(path)
    # v1 keeps the 256 positions of its runs; v2 latent traces need the benchmark's budget
    budget = args.max_new_tokens or max(256, latent_budget(bench, model.n_latent))
    shares: list[float] = []
    in_block: list[bool] = []
    after: list[bool] = []
    exs = benchmark_examples(bench, args.split, args.n, args.start)
    prog, task = _bar("latent attribution", len(exs))
    with prog:
        for i, e in enumerate(exs):
            x = proc([e.image()], [e.question.text])
            n_img = int((x["input_ids"] == model.image_token_id).sum())
            with torch.inference_mode():
                cap, _ = model.capture(
                    x,
                    np.ones((1, n_img), dtype=np.float32),
                    decode=proc.decode,
                    max_new_tokens=budget,
                    eos_token_id=int(proc.tokenizer.eos_token_id),
                )
            seen = False
            for sp, sh in zip(cap.spans, latent_share(cap.features, cap.parts["latent"], weights), strict=True):
                shares.append(float(sh))
                in_block.append("<latent>" in sp.text)
                after.append(seen and not in_block[-1])
                seen = seen or in_block[-1]
            prog.update(task, completed=i + 1)
    sh = np.asarray(shares)
    blk = np.asarray(in_block, dtype=bool)
    aft = np.asarray(after, dtype=bool)
    res = {
        "model": str(path),
        "mode": model.mode,
        "benchmark": bench,
        "dataset": f"{bench}:{args.split}",
        "max_new_tokens": budget,
        "n_examples": len(exs),
        "n_spans": int(sh.size),
        "weights": "estimator" if weights is not None else "uniform",
        "latent_share_mean": float(sh.mean()) if sh.size else float("nan"),
        "latent_share_spans_with_latents": float(sh[blk].mean()) if blk.any() else float("nan"),
        "latent_share_later_spans": float(sh[aft].mean()) if aft.any() else float("nan"),
        "n_spans_with_latents": int(blk.sum()),
        "n_later_spans": int(aft.sum()),
    }
    console.print_json(data=res)
    if args.json:
        atomic_write_json(args.json, res)
    return 0
