"""Check that the bundled models behave exactly as recorded before the layout change (commit 2059433).

Recomputes, with today's API, what ``tests/data/behaviour_reference.json`` recorded
with the old one: the streamed attributions of the bundled model on shapes:test 0-3
(span texts and token ranges, every region score, the top regions, the output,
answer and correctness, the per-example check against ablation), and the
collected features, estimator scores and ablation targets of both bundled models
(base and v1 point-and-copy) on shapes:test 0-2.

Usage::

    python examples/check_behaviour.py [--quick] [--json OUT]

``--quick`` checks one streamed example and one collected example per model
(what ``tests/test_behaviour.py`` runs). Exit status 1 on any difference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE = Path(__file__).resolve().parent.parent / "tests" / "data" / "behaviour_reference.json"
SCORE_ATOL = 2e-6  # the reference rounds scores to 7 decimals
DELTA_ATOL = 2e-5  # and ablation drops to 6
# Ablation drops are sums of float32 log-probs that reach hundreds of nats; another CPU's kernels round them
# differently (4.2e-5 on a 371-nat drop, 1.1e-7 relative, on an AVX-512 Xeon against the recording machine).
DELTA_RTOL = 1e-6


def _is_numeric(v: Any) -> bool:
    """A float or a (nested) list of numbers, not an int count or a string."""
    if isinstance(v, float):
        return True
    if isinstance(v, list) and v:
        try:
            return np.asarray(v).dtype.kind == "f"
        except ValueError:
            return False
    return False


def _close(a: Any, b: Any, atol: float, rtol: float = 0.0) -> bool:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return x.shape == y.shape and bool(np.allclose(x, y, rtol=rtol, atol=atol, equal_nan=True))


def check_stream(n: int) -> list[str]:
    """Differences between today's streamed results and the reference's, on its first ``n`` examples."""
    from attrib.collect.datasets import open_dataset
    from attrib.streaming.stream import Attributor

    ref = json.loads(REFERENCE.read_text())["stream"][:n]
    a = Attributor.load("shapes-qwen25vl")  # the model the reference was recorded on
    errors: list[str] = []
    for r, item in zip(ref, open_dataset("shapes:test").items(len(ref), 0), strict=True):
        res = a.stream(item.load_image(), item.question, truth=item.answer).run()
        f = a.verify(res)
        where = r["uid"]
        for key, got in (
            ("output", res.output),
            ("answer", res.answer),
            ("correct", res.correct),
            ("generated_ids", res.generated_ids),
        ):
            if got != r[key]:
                errors.append(f"stream {where}: {key} {got!r} != {r[key]!r}")
        sha = hashlib.sha256(np.ascontiguousarray(res.regions).astype(np.int64).tobytes()).hexdigest()
        if sha != r["regions_sha"]:
            errors.append(f"stream {where}: region map differs")
        if len(res.spans) != len(r["spans"]):
            errors.append(f"stream {where}: {len(res.spans)} spans != {len(r['spans'])}")
            continue
        for s, rs in zip(res.spans, r["spans"], strict=True):
            if (s.index, s.text, s.start, s.end) != (rs["index"], rs["text"], rs["start"], rs["end"]):
                errors.append(f"stream {where} span {s.index}: {(s.text, s.start, s.end)} != reference")
            if not _close(s.scores, rs["scores"], SCORE_ATOL):
                errors.append(f"stream {where} span {s.index}: scores differ (max {_maxdiff(s.scores, rs['scores'])})")
            if [k for k, _ in s.top_regions] != [k for k, _ in rs["top_regions"]]:
                errors.append(f"stream {where} span {s.index}: top regions differ")
        for key, val in r["verify"].items():
            got = f.get(key)
            ok = _close(got, val, 1e-5) if isinstance(val, float) else got == val
            if not ok:
                errors.append(f"stream {where}: verify {key} {got!r} != {val!r}")
    return errors


def _maxdiff(a: Any, b: Any) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def check_collect(n: int) -> list[str]:
    """Differences between today's collected examples and the reference's, on its first ``n`` examples per model."""
    from attrib.collect.datasets import open_dataset
    from attrib.collect.pipeline import CollectConfig, example_results
    from attrib.models.loading import load
    from estimators.linear import LinearHeadEstimator

    ref = json.loads(REFERENCE.read_text())["collect"]
    errors: list[str] = []
    for name, rows in ref.items():
        loaded = load(name)
        est_path = loaded.default_estimator()
        assert est_path is not None
        est = LinearHeadEstimator.load(est_path)
        mode = "mask" if name == "shapes-qwen25vl" else "mean"
        cfg = CollectConfig(model=name, dataset="shapes:test", n=3, n_subsets=8, loo=True, ablation_mode=mode)
        ds = open_dataset(cfg.dataset)
        for idx, (row, item) in enumerate(zip(rows[:n], ds.items(n, 0), strict=False)):
            res = example_results([cfg], loaded, ds, item, idx)[0]
            if isinstance(res, Exception):
                errors.append(f"collect {name} {row['uid']}: failed: {res}")
                continue
            feats = res["features"]
            where = f"collect {name} {row['uid']}"
            rec = dict(res["record"])
            for key, val in row["record"].items():
                got = rec.get(key)
                if _is_numeric(val) and _is_numeric(got):  # computed from features: same tolerance
                    if not _close(got, val, SCORE_ATOL):
                        errors.append(f"{where}: record {key} differ (max {_maxdiff(got, val):.2e})")
                elif got != val:
                    errors.append(f"{where}: record {key} {rec.get(key)!r} != {val!r}")
            for key, got, want, tol in (
                ("scores", est.region_scores(feats), row["scores"], SCORE_ATOL),
                ("region_mass", feats.sum(axis=(2, 3)), row["region_mass"], SCORE_ATOL),
                ("layer_head_mass", feats.sum(axis=1).reshape(feats.shape[0], -1), row["layer_head_mass"], SCORE_ATOL),
                ("subset_deltas", res["subset_deltas"], row["subset_deltas"], DELTA_ATOL),
                ("loo_deltas", res["loo_deltas"], row["loo_deltas"], DELTA_ATOL),
            ):
                if not _close(got, want, tol, DELTA_RTOL if tol == DELTA_ATOL else 0.0):
                    errors.append(f"{where}: {key} differ (max {_maxdiff(got, want):.2e})")
            if np.asarray(res["subsets"]).astype(int).tolist() != row["subsets"]:
                errors.append(f"{where}: removal sets differ")
    return errors


def main(argv: list[str] | None = None) -> int:
    """Run the checks; print every difference."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one streamed and one collected example per model")
    p.add_argument("--json", default=None, help="write {'errors': [...], 'checked': {...}} here")
    args = p.parse_args(argv)
    n_stream, n_collect = (1, 1) if args.quick else (4, 3)
    errors = check_stream(n_stream) + check_collect(n_collect)
    for e in errors:
        print(e)
    print(f"{'DIFFERENT' if errors else 'identical'}: {n_stream} streamed, {n_collect} collected per model")
    if args.json:
        Path(args.json).write_text(json.dumps({"errors": errors, "stream": n_stream, "collect": n_collect}) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
