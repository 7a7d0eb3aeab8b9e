"""Capture overhead: generation with attention capture vs plain SDPA generation, in one run.

Usage:
    python examples/bench_capture.py --json OUT [--quick] [--device cpu|cuda] [--models bundled,30m,7b]

For each model and length (256, 1,000 and 2,000 generated tokens, forced with
``min_new_tokens``), plain and captured generations alternate (plain, capture,
plain, ...) and the overhead is the ratio of the medians of seconds per token.
Peak RSS is measured in fresh subprocesses (one per mode) at the longest length,
so model loading is counted the same way in both.

Writes ``{"runs": [{"model", "generated_tokens", "overhead_ratio",
"ms_per_token_plain", "ms_per_token_capture", "peak_rss_plain_mb",
"peak_rss_capture_mb"}], ...}``.
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
from PIL import Image

from attrib.capture import AttentionCapture
from attrib.io import atomic_write_json
from attrib.regions import segment


def build_model(name: str, device: str) -> tuple[Any, dict[str, torch.Tensor], Any]:
    """(model, inputs, decode) for ``bundled``, ``30m`` (random Qwen2.5-VL) or ``7b`` (random, bf16)."""
    from attrib.shapes import make_example

    ex = make_example("test", 0)
    if name == "bundled":
        import attrib

        m = attrib.load()
        model, proc = m.model, m.processor
        x = proc.build(ex.image(), ex.question.text)
        return model.to(device), {k: v.to(device) for k, v in x.items()}, proc.tokenizer.decode
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

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


def time_once(model: Any, x: dict[str, torch.Tensor], decode: Any, n: int, capture: bool, device: str) -> float:
    kw = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False}
    with torch.inference_mode():
        _sync(device)
        t0 = time.perf_counter()
        if capture:
            with AttentionCapture(model, x, assignment(), decode=decode) as cap:
                model.generate(**x, streamer=cap.streamer, **kw)
            cap.result()
        else:
            model.generate(**x, **kw)
        _sync(device)
    return (time.perf_counter() - t0) / n


def child(args: argparse.Namespace) -> None:
    model, x, decode = build_model(args.model, args.device)
    time_once(model, x, decode, args.tokens, args.mode == "capture", args.device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
    print(json.dumps({"peak_rss_mb": rss, "peak_gpu_mb": gpu}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true", help="256 tokens, 2 repeats (< 2 minutes)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="bundled,30m")
    ap.add_argument("--reps", type=int, default=None)
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
    reps = args.reps or (2 if args.quick else 3)
    out: dict[str, Any] = {
        "runs": [],
        "device": args.device,
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "reps": reps,
        "quick": args.quick,
    }
    for name in args.models.split(","):
        model, x, decode = build_model(name, args.device)
        time_once(model, x, decode, 16, True, args.device)  # warm-up
        for n in lengths:
            plain, cap = [], []
            for _ in range(reps):
                plain.append(time_once(model, x, decode, n, False, args.device))
                cap.append(time_once(model, x, decode, n, True, args.device))
            mp, mc = statistics.median(plain), statistics.median(cap)
            out["runs"].append(
                {
                    "model": name,
                    "generated_tokens": n,
                    "ms_per_token_plain": mp * 1e3,
                    "ms_per_token_capture": mc * 1e3,
                    "added_ms_per_token": (mc - mp) * 1e3,
                    "overhead_ratio": mc / mp,
                }
            )
            print(f"{name} {n} tokens: plain {mp * 1e3:.2f} ms/tok, capture {mc * 1e3:.2f} ms/tok, x{mc / mp:.3f}")
        del model
        n_mem = lengths[-1]
        mem = {}
        for mode in ("plain", "capture"):
            cmd = [sys.executable, __file__, "--child", "--model", name, "--tokens", str(n_mem), "--mode", mode]
            cmd += ["--device", args.device]
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            mem[mode] = json.loads(res.stdout.strip().splitlines()[-1])
        for r in out["runs"]:
            if r["model"] == name:
                r["peak_rss_plain_mb"] = mem["plain"]["peak_rss_mb"]
                r["peak_rss_capture_mb"] = mem["capture"]["peak_rss_mb"]
                r["memory_measured_at_tokens"] = n_mem
                if args.device == "cuda":
                    r["peak_gpu_plain_mb"] = mem["plain"]["peak_gpu_mb"]
                    r["peak_gpu_capture_mb"] = mem["capture"]["peak_gpu_mb"]
        rp, rc = mem["plain"]["peak_rss_mb"], mem["capture"]["peak_rss_mb"]
        print(f"{name} peak RSS at {n_mem} tokens: plain {rp:.0f} MB, capture {rc:.0f} MB")
    atomic_write_json(args.json, out)


if __name__ == "__main__":
    main()
