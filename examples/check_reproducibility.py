"""Rerun the first checkpoints of a training run and compare their weight digests bitwise.

A full rerun of ``attrib shapes train`` takes as long as the run itself; training is
deterministic for a given config and thread count, so the weights at the first
checkpoints of a rerun must equal the recorded ones bit for bit. This script reruns
the config recorded in ``train_log.json`` up to ``--steps`` (a checkpoint boundary)
and compares the digests.

    python examples/check_reproducibility.py attrib/bundled/shapes-qwen25vl/train_log.json --steps 250 \
        --json out/reproducibility.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import transformers

from attrib.shapes.model import ModelSize
from attrib.shapes.scene import Difficulty
from attrib.shapes.train import TrainConfig, cpu_model, train


class _StopError(Exception):
    pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train_log", help="train_log.json of the run to check")
    ap.add_argument("--steps", type=int, default=250, help="rerun up to this step (a checkpoint boundary)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    log = json.loads(Path(args.train_log).read_text())
    c = dict(log["config"])
    c.pop("benchmark_version", None)
    c["size"] = ModelSize(**c["size"])
    c["difficulty"] = Difficulty.from_dict(c["difficulty"])
    cfg = TrainConfig(**c)
    if args.steps % cfg.ckpt_every:
        raise SystemExit(f"--steps must be a multiple of the checkpoint interval {cfg.ckpt_every}")
    recorded = {int(s): d for s, d in log["checkpoint_digests"]}
    work = Path(tempfile.mkdtemp(prefix="attrib-repro-"))
    out = work / "model"

    def stop(step: int, total: int, loss: float) -> None:
        if step > args.steps:
            raise _StopError

    t0 = time.perf_counter()
    with contextlib.suppress(_StopError):
        train(cfg, out, on_step=stop)
    meta = json.loads((out.with_name(out.name + ".ckpt") / "meta.json").read_text())
    rerun = {int(s): d for s, d in meta["digests"]}
    shutil.rmtree(work, ignore_errors=True)
    rows = [
        {"step": s, "recorded": recorded.get(s), "rerun": d, "equal": recorded.get(s) == d} for s, d in rerun.items()
    ]
    res = {
        "train_log": args.train_log,
        "date": date.today().isoformat(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": cpu_model(),
        "recorded_environment": {k: log.get(k) for k in ("torch", "transformers", "cpu")},  # None: not recorded
        "threads": cfg.threads,
        "steps": args.steps,
        "config": log["config"],
        "checkpoints": rows,
        "all_equal": all(r["equal"] for r in rows),
        "seconds": time.perf_counter() - t0,
    }
    text = json.dumps(res, indent=1)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0 if res["all_equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
