"""Per-step training time from a late checkpoint, with and without denormal flushing.

    python examples/probe_denormal_speed.py --ckpt runs/r3/shapes-qwen25vl.ckpt --steps 60
    python examples/probe_denormal_speed.py --ckpt runs/r3/shapes-qwen25vl.ckpt --steps 60 --flush

The checkpoint directory (``model.safetensors`` + ``optimizer.pt`` + ``meta.json``) comes from
``attrib shapes train``. The steps continue from the checkpoint's step with the recorded batch size,
compiled, with the vision fast path, 2 threads; the first 10 are not timed. Prints the median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--flush", action="store_true", help="torch.set_flush_denormal(True) before anything runs")
    args = ap.parse_args()
    if args.flush:
        torch.set_flush_denormal(True)  # before the thread pool starts
    torch.set_num_threads(2)
    from safetensors.torch import load_file

    from attrib.shapes.fastpath import vision_fast_path
    from attrib.shapes.train import TrainConfig, lr_at, new_model, step_batch

    ckpt = Path(args.ckpt)
    meta = json.loads((ckpt / "meta.json").read_text())
    cfg = TrainConfig(batch_size=int(meta["config"]["batch_size"]))
    model, proc = new_model(cfg)
    model.train()
    model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    for blk in model.model.visual.blocks:
        blk.compile(dynamic=False)
    for layer in model.model.language_model.layers:
        layer.compile(dynamic=True)
    times = []
    with vision_fast_path(model):
        for i in range(args.steps):
            step = int(meta["step"]) + i
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            batch = step_batch(proc, cfg, step)
            t = time.perf_counter()
            model(**batch).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t)
    timed = times[10:]
    sys.stdout.write(
        f"flush={args.flush} step={meta['step']} median {statistics.median(timed):.3f} s "
        f"mean {statistics.mean(timed):.3f} s n={len(timed)}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
