"""Per-step cost of suppressing a few token ids: transformers' ``suppress_tokens`` against attrib's processor.

Usage:
    python examples/probe_suppress_tokens.py --json OUT [--vocab 104,151936] [--threads 1]

Times one call of each logits-processor list on ``(1, vocab)`` float32 scores (best of 5 rounds of
2,000 calls), suppressing 4 ids: transformers' ``SuppressTokensLogitsProcessor`` (what
``generate(suppress_tokens=...)`` adds) and the processor attrib's streamed path uses
(``attrib.variants.registry._suppressor``). 104 is the bundled model's vocabulary, 151,936 Qwen2.5-VL's.
"""

from __future__ import annotations

import argparse
import timeit

import torch
from transformers import LogitsProcessorList
from transformers.generation.logits_process import SuppressTokensLogitsProcessor

from attrib.io import atomic_write_json
from attrib.variants.registry import _suppressor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True)
    ap.add_argument("--vocab", default="104,151936")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for v in (int(x) for x in args.vocab.split(",")):
        ids = [v - 4, v - 3, v - 2, v - 1]
        scores = torch.randn(1, v)
        input_ids = torch.zeros(1, 300, dtype=torch.long)
        row: dict[str, float | int] = {"vocab": v}
        for name, procs in (
            ("transformers_us", LogitsProcessorList([SuppressTokensLogitsProcessor(ids)])),
            ("attrib_us", LogitsProcessorList([_suppressor(ids)])),
        ):
            n = 2000
            best = min(timeit.repeat(lambda procs=procs, s=scores, i=input_ids: procs(i, s), number=n, repeat=5))
            row[name] = best / n * 1e6
        rows.append(row)
        print(f"vocab {v}: transformers {row['transformers_us']:.1f} us, attrib {row['attrib_us']:.1f} us per step")
    atomic_write_json(args.json, {"threads": args.threads, "torch": torch.__version__, "n_suppressed": 4, "rows": rows})


if __name__ == "__main__":
    main()
