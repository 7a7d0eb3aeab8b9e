"""Capture overhead: generation with attention capture vs plain SDPA generation, in one run.

Usage:
    python examples/bench_capture.py --json OUT [--quick] [--device cpu|cuda] [--models bundled,30m,7b]
        [--reps N] [--mem-tokens N]

For each model and length (256, 1,000 and 2,000 generated tokens, forced with
``min_new_tokens``; ``--quick``: 256), plain and captured generations alternate
(plain, capture, plain, ...) in one process and the overhead is the ratio of the
medians of seconds per token. The captured run counts everything the capture
costs a user: setting it up, every forward pass under it, its span segmentation,
and ``result()``; the region assignment is an input, built once beforehand.

Memory: fresh subprocesses of one kind (this script, same model, same length, same
inputs, same 16-token warm-up; only the mode differs), one per mode and repeat, alternating,
generate ``--mem-tokens`` tokens (default 4,000). Just before that generation each resets its
peak RSS to its current RSS (Linux ``/proc/self/clear_refs``), so ``peak_rss_*_mb`` is the peak
while generating (loading the model peaks higher, and would hide the capture: that whole-process
peak is ``peak_rss_process_*_mb``) and ``growth_*_mb`` the rise above the RSS before it (and peak
GPU memory on CUDA). The capture's own memory is ``capture_extra_mb = growth_capture_mb -
growth_plain_mb`` (medians); the features it keeps are ``features_mb`` (spans x K x L x H
float32), and ``capture_growth_mb_per_1000_tokens`` is what remains beyond them, per 1,000 tokens.

Writes ``{"runs": [{"model", "generated_tokens", "overhead_ratio",
"ms_per_token_plain", "ms_per_token_capture", "peak_rss_plain_mb",
"peak_rss_capture_mb", ...}], "memory": [...], ...}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch
from _rss import reset_peak_rss, status_mb  # examples/_rss.py (this folder is on sys.path)
from PIL import Image

from attrib.capture import AttentionCapture
from attrib.io import atomic_write_json
from attrib.regions import segment


def build_model(name: str, device: str) -> tuple[Any, dict[str, torch.Tensor], Any]:
    """(model, inputs, decode) for ``bundled``, ``30m`` (random Qwen2.5-VL) or ``7b`` (random, bf16)."""
    from attrib.shapes.v2 import make_example  # the bundled model's benchmark (v2)

    ex = make_example("test", 1)  # 224x224: 64 visual tokens, so 4,000 generated tokens fit the 4,096 context
    if name == "bundled":
        import attrib

        m = attrib.load()
        model, proc = m.model, m.processor
        x = proc.build(ex.image(), ex.question.text)
        return model.to(device), {k: v.to(device) for k, v in x.items()}, proc.tokenizer.decode
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text: dict[str, Any]
    vision: dict[str, Any]
    if name == "30m":
        text = {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 4}
        text |= {"intermediate_size": 1408, "vocab_size": 16000}
        vision = {"depth": 4, "hidden_size": 256, "intermediate_size": 512, "num_heads": 4, "out_hidden_size": 512}
        dtype = torch.float32
    elif name == "7b":
        text = {"hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4}
        text |= {"intermediate_size": 18944, "vocab_size": 152064}
        vision = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584}
        dtype = torch.bfloat16
    else:
        raise ValueError(f"unknown model {name!r}")
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    half = head_dim // 2
    t = half // 4
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 1e6,
        "mrope_section": [t, (half - t) // 2, half - t - (half - t) // 2],
    }
    text["max_position_embeddings"] = 8192
    vision |= {"fullatt_block_indexes": [vision["depth"] - 1], "window_size": 112}
    cfg = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=151655 % text["vocab_size"],
        video_token_id=151656 % text["vocab_size"],
        vision_start_token_id=151652 % text["vocab_size"],
        vision_end_token_id=151653 % text["vocab_size"],
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, attn_implementation="sdpa", dtype=dtype).eval()
    # Inputs built by hand: 64 image tokens (224x224), a short prompt.
    img_id = cfg.image_token_id
    ids = torch.tensor([[1, cfg.vision_start_token_id, *([img_id] * 64), cfg.vision_end_token_id, 5, 6, 7, 8]])
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    vis = Qwen2VLImageProcessorPil(min_pixels=224 * 224, max_pixels=224 * 224)(images=[ex.image()], return_tensors="pt")
    x = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == img_id).long(),
        "pixel_values": vis["pixel_values"].to(dtype),
        "image_grid_thw": vis["image_grid_thw"],
    }

    def decode(ids_: list[int]) -> str:
        # Random weights: treat every 20th generated token as a sentence end so spans close.
        return "".join("." if i % 20 == 0 else "x" for i in ids_)

    return model, {k: v.to(device) for k, v in x.items()}, decode


def assignment(k: int = 32) -> np.ndarray:
    img = Image.new("RGB", (224, 224))
    return segment(img, k, method="grid").assign_tokens("qwen2_5_vl").matrix


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_once(
    model: Any, x: dict[str, torch.Tensor], decode: Any, n: int, capture: bool, device: str, assign: np.ndarray
) -> tuple[float, Any]:
    """Seconds per token of one generation of ``n`` tokens (plain or under a capture), and the capture's result."""
    kw = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False}
    res = None
    with torch.inference_mode():
        _sync(device)
        t0 = time.perf_counter()
        if capture:
            with AttentionCapture(model, x, assign, decode=decode) as cap:
                model.generate(**x, streamer=cap.streamer, **kw)
            res = cap.result()
        else:
            model.generate(**x, **kw)
        _sync(device)
    return (time.perf_counter() - t0) / n, res


def child(args: argparse.Namespace) -> None:
    model, x, decode = build_model(args.model, args.device)
    assign = assignment()
    run_once(model, x, decode, 16, args.mode == "capture", args.device, assign)  # the same warm-up in both modes
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = reset_peak_rss()
    _, res = run_once(model, x, decode, args.tokens, args.mode == "capture", args.device, assign)
    peak = status_mb("VmHWM")
    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
    feats = 0.0 if res is None else res.features.nbytes / 2**20
    n_spans = 0 if res is None else len(res.spans)
    doc = {"peak_rss_mb": peak, "rss_before_mb": before, "growth_mb": peak - before}
    doc |= {"peak_rss_process_mb": process_peak, "peak_gpu_mb": gpu, "features_mb": feats, "n_spans": n_spans}
    print(json.dumps(doc))


def memory(name: str, device: str, tokens: int, reps: int) -> dict[str, Any]:
    """Peak memory of plain and captured generation of ``tokens`` tokens, fresh subprocesses, alternating."""
    got: dict[str, list[dict[str, Any]]] = {"plain": [], "capture": []}
    for _ in range(reps):
        for mode in ("plain", "capture"):
            cmd = [sys.executable, __file__, "--child", "--model", name, "--tokens", str(tokens), "--mode", mode]
            cmd += ["--device", device]
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            got[mode].append(json.loads(res.stdout.strip().splitlines()[-1]))
    med = {m: statistics.median(r["peak_rss_mb"] for r in rs) for m, rs in got.items()}
    grow = {m: statistics.median(r["growth_mb"] for r in rs) for m, rs in got.items()}
    feats = statistics.median(r["features_mb"] for r in got["capture"])
    extra = grow["capture"] - grow["plain"]
    out: dict[str, Any] = {
        "model": name,
        "generated_tokens": tokens,
        "reps": reps,
        "peak_rss_plain_mb": med["plain"],
        "peak_rss_capture_mb": med["capture"],
        "peak_rss_plain_mb_each": [r["peak_rss_mb"] for r in got["plain"]],
        "peak_rss_capture_mb_each": [r["peak_rss_mb"] for r in got["capture"]],
        "growth_plain_mb": grow["plain"],
        "growth_capture_mb": grow["capture"],
        "growth_plain_mb_each": [r["growth_mb"] for r in got["plain"]],
        "growth_capture_mb_each": [r["growth_mb"] for r in got["capture"]],
        "peak_rss_process_plain_mb": statistics.median(r["peak_rss_process_mb"] for r in got["plain"]),
        "peak_rss_process_capture_mb": statistics.median(r["peak_rss_process_mb"] for r in got["capture"]),
        "capture_extra_mb": extra,
        "features_mb": feats,
        "n_spans": statistics.median(r["n_spans"] for r in got["capture"]),
        "capture_growth_mb_per_1000_tokens": (extra - feats) / (tokens / 1000),
    }
    if device == "cuda":
        gp = statistics.median(r["peak_gpu_mb"] for r in got["plain"])
        gc = statistics.median(r["peak_gpu_mb"] for r in got["capture"])
        out |= {"peak_gpu_plain_mb": gp, "peak_gpu_capture_mb": gc, "capture_extra_gpu_mb": gc - gp}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true", help="256 tokens; memory from one subprocess per mode")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="bundled,30m")
    ap.add_argument("--reps", type=int, default=None, help="timing repeats per mode and length (default 5)")
    ap.add_argument("--mem-tokens", type=int, default=4000, help="generated tokens of the memory runs")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if not args.json:
        ap.error("--json is required")
    lengths = [256] if args.quick else [256, 1000, 2000]
    reps = args.reps or 5
    mem_reps = 1 if args.quick else 2
    out: dict[str, Any] = {
        "runs": [],
        "memory": [],
        "device": args.device,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "reps": reps,
        "quick": args.quick,
    }
    t_start = time.perf_counter()
    for name in args.models.split(","):
        model, x, decode = build_model(name, args.device)
        assign = assignment()
        run_once(model, x, decode, 16, True, args.device, assign)  # warm-up
        run_once(model, x, decode, 16, False, args.device, assign)
        for n in lengths:
            plain, cap = [], []
            for _ in range(reps):
                plain.append(run_once(model, x, decode, n, False, args.device, assign)[0])
                cap.append(run_once(model, x, decode, n, True, args.device, assign)[0])
            mp, mc = statistics.median(plain), statistics.median(cap)
            out["runs"].append(
                {
                    "model": name,
                    "generated_tokens": n,
                    "ms_per_token_plain": mp * 1e3,
                    "ms_per_token_capture": mc * 1e3,
                    "ms_per_token_plain_each": [v * 1e3 for v in plain],
                    "ms_per_token_capture_each": [v * 1e3 for v in cap],
                    "added_ms_per_token": (mc - mp) * 1e3,
                    "overhead_ratio": mc / mp,
                }
            )
            print(f"{name} {n} tokens: plain {mp * 1e3:.3f} ms/tok, capture {mc * 1e3:.3f} ms/tok, x{mc / mp:.4f}")
        del model
        mem = memory(name, args.device, args.mem_tokens, mem_reps)
        out["memory"].append(mem)
        for r in out["runs"]:
            if r["model"] == name:
                r["peak_rss_plain_mb"] = mem["peak_rss_plain_mb"]
                r["peak_rss_capture_mb"] = mem["peak_rss_capture_mb"]
                r["memory_measured_at_tokens"] = args.mem_tokens
                if args.device == "cuda":
                    r["peak_gpu_plain_mb"] = mem["peak_gpu_plain_mb"]
                    r["peak_gpu_capture_mb"] = mem["peak_gpu_capture_mb"]
        print(
            f"{name} peak RSS at {args.mem_tokens} tokens: plain {mem['peak_rss_plain_mb']:.1f} MB, capture "
            f"{mem['peak_rss_capture_mb']:.1f} MB (features {mem['features_mb']:.2f} MB; beyond them "
            f"{mem['capture_growth_mb_per_1000_tokens']:+.3f} MB per 1,000 tokens)"
        )
    out["wall_s"] = time.perf_counter() - t_start
    atomic_write_json(args.json, out)


if __name__ == "__main__":
    main()
