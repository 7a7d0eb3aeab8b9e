"""``attrib latent``: capacity-guided selection, fine-tuning and intervention probing of latent variants."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.table import Table

from attrib.cli.console import console, out, progress, split_choices

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add ``latent select``, ``latent train``, ``latent probe``, ``latent attribution`` and ``latent table``."""
    p = sub.add_parser("latent", help="latent-visual-token variants (GAP): select, train, probe")
    ls = p.add_subparsers(dest="latent_command", required=True)

    s = ls.add_parser("select", help="base sampled accuracy on the training pool (capacity-guided selection)")
    s.add_argument(
        "--base",
        default="shapes-qwen25vl",
        help="bundled name or directory of the base model (default: shapes-qwen25vl, the benchmark-v1 model: "
        "the latent experiment draws benchmark-v1 examples)",
    )
    s.add_argument("--pool-start", type=int, default=0, help="first training example of the pool")
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
        default="shapes-qwen25vl",
        help="bundled name or directory of the base model (default: shapes-qwen25vl, the benchmark-v1 model: "
        "the latent experiment draws benchmark-v1 examples)",
    )
    t.add_argument("--selection", required=True, help="JSON written by `attrib latent select`")
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
    e.add_argument("--split", default="test", choices=split_choices, help="benchmark split")
    e.add_argument("--n", type=int, default=200, help="examples")
    e.add_argument("--start", type=int, default=0, help="first example")
    e.add_argument(
        "--interventions", default="zeros,noise,mean,shuffle", help="comma-separated latent replacements to probe"
    )
    e.add_argument("--norms-n", type=int, default=16, help="examples for the layer-wise norm table (0: skip)")
    e.add_argument("--batch-size", type=int, default=32, help="examples per generate call")
    e.add_argument("--threads", type=int, default=2, help="torch threads")
    e.add_argument("--json", default=None, help="write the results here")
    e.set_defaults(fn=_cmd_probe)

    a = ls.add_parser("attribution", help="per span, the share of attribution through latents vs image tokens")
    a.add_argument("--model", required=True, help="a latent-variant directory")
    a.add_argument("--estimator", default=None, help="L x H estimator weighting the share (default: uniform)")
    a.add_argument("--split", default="test", choices=split_choices, help="benchmark split")
    a.add_argument("--n", type=int, default=30, help="examples")
    a.add_argument("--start", type=int, default=0, help="first example")
    a.add_argument("--threads", type=int, default=2, help="torch threads")
    a.add_argument("--json", default=None, help="write the results here")
    a.set_defaults(fn=_cmd_attribution)

    tb = ls.add_parser("table", help="the side-by-side table of modes across seeds, from probe JSONs")
    tb.add_argument("results", nargs="+", help="probe JSON files")
    tb.add_argument("--json", default=None, help="write the table here")
    tb.set_defaults(fn=_cmd_table)


def _base(name: str | None) -> Path:
    from attrib.models.loading import resolve_path

    p = resolve_path(name)
    if not isinstance(p, Path):
        raise ValueError(f"{name!r} is not a bundled model or a local directory")
    return p


def _bar(desc: str, total: int) -> Any:
    prog = progress()
    return prog, prog.add_task(desc, total=total)


def _cmd_select(args: argparse.Namespace) -> int:
    import torch

    from attrib.shapes.latent_train import LatentConfig, pool, sampled_accuracy, save_selection
    from attrib.shapes.model import load_model

    torch.set_num_threads(args.threads)
    base = _base(args.base)
    model, proc = load_model(base)
    cfg = LatentConfig(pool_start=args.pool_start, pool_n=args.pool_n)
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
            on_progress=lambda d, t: prog.update(task, completed=d, total=t),
        )
    meta = {"base": str(base), "samples": args.samples, "seed": args.seed, "pool_start": args.pool_start}
    save_selection(args.out, exs, acc, meta)
    console.print(f"wrote {args.out}: mean sampled accuracy {acc.mean():.3f}; share <= 0.5: {(acc <= 0.5).mean():.3f}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from attrib.shapes.latent_train import LatentConfig, load_selection, train_latent

    over = {k: getattr(args, k) for k in ("steps", "batch_size", "tau", "pool_n") if getattr(args, k) is not None}
    cfg = LatentConfig(mode=args.mode, seed=args.seed, threads=args.threads, **over)
    sel = load_selection(args.selection)
    prog, task = _bar("latent train", cfg.steps)
    with prog:
        log = train_latent(
            _base(args.base),
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
    from attrib.shapes.dataset import iter_split
    from attrib.shapes.latent_train import evaluate_latent, latent_norms, load_latent

    torch.set_num_threads(args.threads)
    path = _base(args.model)
    model, proc = load_latent(path)
    exs = list(iter_split(args.split, args.n, start=args.start))
    kinds = [k for k in args.interventions.split(",") if k]
    prog, task = _bar("probe", len(exs) * (1 + len(kinds)))
    with prog:
        res = evaluate_latent(
            model,
            proc,
            exs,
            interventions=kinds,
            batch_size=args.batch_size,
            on_progress=lambda d, t: prog.update(task, completed=d, total=t),
        )
    if args.norms_n:
        res["norms"] = latent_norms(model, proc, exs[: args.norms_n], name=str(path)).to_dict()
    res["model"] = str(path)
    res["split"], res["start"] = args.split, args.start
    log = path / "latent_train_log.json"
    if log.is_file():
        import json

        res["train"] = {k: v for k, v in json.loads(log.read_text()).items() if k not in ("losses", "aux")}
    t = Table(title=f"latent probing: {path} ({res['mode']}, n={res['n']})")
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
    for f in args.results:
        r = json.loads(Path(f).read_text())
        by_mode.setdefault(r["mode"], []).append(r)
    table = {m: seed_table(rs) for m, rs in sorted(by_mode.items())}
    t = Table(title="latent variants across seeds")
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
    from attrib.shapes.dataset import iter_split
    from attrib.shapes.latent_train import load_latent

    torch.set_num_threads(args.threads)
    path = _base(args.model)
    model, proc = load_latent(path)
    weights = None
    if args.estimator:
        from estimators.linear import LinearHeadEstimator

        weights = np.asarray(LinearHeadEstimator.load(args.estimator).coef_, dtype=np.float64)
    shares: list[float] = []
    in_block: list[bool] = []
    after: list[bool] = []
    exs = list(iter_split(args.split, args.n, start=args.start))
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
