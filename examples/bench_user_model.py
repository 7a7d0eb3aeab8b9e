"""What fitting an estimator for your own checkpoint costs: per-example collection time on this machine,
measured on randomly initialised Qwen2.5-VL models of growing size, and projected to a 7B model.

Usage:
    python examples/bench_user_model.py --json OUT [--quick] [--dtype float32|bfloat16]

Collecting one example costs one generation under capture (``T`` tokens) plus the ablation forwards over
the prompt and the trace: ``n_subsets`` random removal sets (default 32; ``--loo`` adds K more), batched.
Both parts are timed here on real-shaped models (the Qwen2.5-VL class, its real vocabulary of 151,936
tokens, a 448 x 448 image), with the pipeline's own code (``AttentionCapture``, ``AblationRunner``).
Generation is timed whole; the ablation's per-subset cost is timed on one batch and scaled to
``n_subsets``. The time per example is then fit as linear in the language model's parameter count
(compute per token is) and projected to Qwen2.5-VL-7B's language model (7.07B parameters, vision tower
excluded: it runs once per example and is a small share). A projection from models under 1B on a
CPU is a rough guide, not a measurement: memory bandwidth, cache sizes and kernels change with size,
and a GPU changes everything; measure a few examples of your own model before planning a large fit.

Writes ``{"runs": [{"name", "params_lm", "seconds_generation", "seconds_per_subset",
"seconds_per_example", ...}], "projection": {...}}``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Any

import numpy as np
import torch

#: Language-model shapes: (name, hidden, layers, heads, kv heads, intermediate).
SIZES = [
    ("hidden 256, 4 layers", 256, 4, 4, 2, 1024),
    ("hidden 512, 8 layers", 512, 8, 8, 2, 2048),
    ("hidden 896, 24 layers (Qwen2-0.5B shape)", 896, 24, 14, 2, 4864),
]
#: Qwen2.5-VL-7B's language model (hidden 3584, 28 layers, 28 heads, 4 KV heads, intermediate 18944).
TARGET = ("Qwen2.5-VL-7B language model", 3584, 28, 28, 4, 18944)
VOCAB = 151_936
IMG_TOKEN = 151_655
VSTART, VEND = 151_652, 151_653


def lm_params(hidden: int, layers: int, heads: int, kv: int, inter: int) -> int:
    """Parameters of a Qwen2 decoder with untied embeddings (embeddings and the output head included)."""
    head_dim = hidden // heads
    attn = hidden * hidden * 2 + 2 * hidden * kv * head_dim + hidden + 2 * kv * head_dim
    mlp = 3 * hidden * inter
    return layers * (attn + mlp + 2 * hidden) + 2 * VOCAB * hidden + hidden


def build(hidden: int, layers: int, heads: int, kv: int, inter: int, dtype: torch.dtype) -> Any:
    """A random Qwen2.5-VL with this language model and a small vision tower."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    head_dim = hidden // heads
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    cfg = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": VOCAB,
            "hidden_size": hidden,
            "intermediate_size": inter,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv,
            "max_position_embeddings": 32768,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [t, h, half - t - h]},
            "eos_token_id": 151645,
            "pad_token_id": 151643,
        },
        vision_config={
            "depth": 4,
            "hidden_size": 256,
            "intermediate_size": 512,
            "num_heads": 4,
            "out_hidden_size": hidden,
            "fullatt_block_indexes": [3],
            "window_size": 112,
        },
        image_token_id=IMG_TOKEN,
        video_token_id=151656,
        vision_start_token_id=VSTART,
        vision_end_token_id=VEND,
    )
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(cfg).to(dtype).eval()
    model.generation_config.eos_token_id = None  # run the whole budget
    return model


def inputs(prompt_words: int = 40) -> tuple[dict[str, torch.Tensor], int]:
    """A 448 x 448 image (16 x 16 merged tokens) and a prompt, as Qwen2.5-VL inputs."""
    from attrib.models.inputs import load_image_processor

    ip = load_image_processor("qwen2_vl", patch_size=14, merge_size=2, min_pixels=448 * 448, max_pixels=448 * 448)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (448, 448, 3), dtype=np.uint8)
    from PIL import Image

    vis = ip(images=[Image.fromarray(img)], return_tensors="np")
    grid = torch.from_numpy(np.asarray(vis["image_grid_thw"]).astype(np.int64))
    n_img = int(grid.prod()) // 4
    ids = [151644, 872, 198, VSTART] + [IMG_TOKEN] * n_img + [VEND]
    ids += [int(v) for v in rng.integers(1000, 50000, prompt_words)] + [151645, 198, 151644, 77091, 198]
    x = {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "pixel_values": torch.from_numpy(np.asarray(vis["pixel_values"], dtype=np.float32)),
        "image_grid_thw": grid,
    }
    mm = torch.zeros(1, len(ids), dtype=torch.long)
    mm[0, torch.tensor(ids) == IMG_TOKEN] = 1
    x["mm_token_type_ids"] = mm
    return x, n_img


def time_one(model: Any, x: dict[str, torch.Tensor], n_img: int, *, tokens: int, batch: int, k: int) -> dict[str, Any]:
    """Generation under capture, then one batch of ablation forwards."""
    from attrib.ablation import AblationRunner, random_subsets
    from attrib.capture import AttentionCapture

    assign = np.zeros((k, n_img), dtype=np.float32)
    assign[np.arange(n_img) % k, np.arange(n_img)] = 1
    dtype = next(model.parameters()).dtype
    x = {key: (v.to(dtype) if key == "pixel_values" else v) for key, v in x.items()}
    t0 = time.perf_counter()
    with torch.inference_mode(), AttentionCapture(model, x, assign, decode=lambda ids: "x." * len(ids)) as cap:
        model.generate(**x, streamer=cap.streamer, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    gen_s = time.perf_counter() - t0
    res = cap.result()
    runner = AblationRunner(model, x, res.generated_ids, assign, batch_size=batch)
    _ = runner.base_logprobs
    subsets = random_subsets(k, batch, seed=0)
    t0 = time.perf_counter()
    runner.logprobs(subsets)
    per_subset = (time.perf_counter() - t0) / batch
    return {"seconds_generation": gen_s, "seconds_per_subset": per_subset, "n_spans": len(res.spans)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True, help="write the results here")
    ap.add_argument("--quick", action="store_true", help="short traces, one repeat, the two smaller sizes")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter dtype")
    ap.add_argument("--tokens", type=int, default=None, help="generated tokens per example (default 200; quick 48)")
    ap.add_argument("--subsets", type=int, default=32, help="removal sets per example (the collect default)")
    ap.add_argument("--k", type=int, default=32, help="regions per image")
    ap.add_argument("--batch", type=int, default=16, help="removal sets per ablation forward (the collect default)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats per size (default 2; quick 1)")
    args = ap.parse_args()
    from attrib.io import atomic_write_json

    tokens = args.tokens or (48 if args.quick else 200)
    repeats = args.repeats or (1 if args.quick else 2)
    sizes = SIZES[:2] if args.quick else SIZES
    dtype = getattr(torch, args.dtype)
    x, n_img = inputs()
    runs = []
    for name, *shape in sizes:
        model = build(*shape, dtype=dtype)
        time_one(model, x, n_img, tokens=8, batch=2, k=args.k)  # warm-up
        reps = [time_one(model, x, n_img, tokens=tokens, batch=args.batch, k=args.k) for _ in range(repeats)]
        gen = statistics.median(r["seconds_generation"] for r in reps)
        sub = statistics.median(r["seconds_per_subset"] for r in reps)
        per_example = gen + sub * args.subsets
        run = {
            "name": name,
            "params_lm": lm_params(*shape),
            "hidden": shape[0],
            "layers": shape[1],
            "heads": shape[2],
            "seconds_generation": gen,
            "seconds_per_subset": sub,
            "seconds_per_example": per_example,
            "seconds_per_example_with_loo": per_example + sub * args.k,
            "repeats": repeats,
        }
        runs.append(run)
        print(
            f"{name}: {run['params_lm'] / 1e6:.0f}M LM params; generation {gen:.1f} s, {sub:.2f} s per subset, "
            f"{per_example:.1f} s per example"
        )
        del model
    p = np.array([r["params_lm"] for r in runs], dtype=np.float64)
    y = np.array([r["seconds_per_example"] for r in runs])
    slope, intercept = np.polyfit(p, y, 1) if len(runs) > 1 else (y[0] / p[0], 0.0)
    target_params = lm_params(*TARGET[1:])
    per_ex_7b = float(slope * target_params + intercept)
    out = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch_threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "generated_tokens": tokens,
        "image_tokens": n_img,
        "prompt_tokens": int(x["input_ids"].shape[1]),
        "n_subsets": args.subsets,
        "k": args.k,
        "batch_size": args.batch,
        "runs": runs,
        "projection": {
            "target": TARGET[0],
            "params_lm": target_params,
            "fit": "seconds_per_example linear in LM parameters over the runs above",
            "seconds_per_example": per_ex_7b,
            "hours_per_1000_examples": per_ex_7b * 1000 / 3600,
        },
    }
    print(f"projected {TARGET[0]}: {per_ex_7b:.0f} s per example, {per_ex_7b * 1000 / 3600:.0f} h per 1,000 examples")
    atomic_write_json(args.json, out)


if __name__ == "__main__":
    main()
