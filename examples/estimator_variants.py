"""Estimator variants on a validation collection: the variant table of docs/estimator.md.

Fits each variant on the training collections (correctly answered examples, all their removal sets) and
scores it on a held-out validation collection made with ``--loo`` and at least 35 removal sets, with the
same protocol as ``attrib evaluate`` (scored on the second half of each example's removal sets; intervals
resample examples; populations by span kind and the image-dependent rule). The test split is not read.

Variants:

- ``shared``: the L x H estimator as the paper fits it (Pearson loss, one calibration for every span);
- ``span_scale``: the same weights with the per-span scale head (``attrib fit``'s default);
- ``span_scale_alpha1``: a 10,000x stronger weight decay on the direction (``alpha=1``), with the head;
- ``nonneg``: the direction constrained to non-negative head weights (softplus), with the head;
- ``gated_J``: J weight vectors mixed per span by a softmax gate over the span's summed features
  (a mixture of experts; still arithmetic on captured features), with the head;
- ``prior_X``: the shipped direction shrunk toward raw attention (the head mean):
  ``w/σ_w + X · 1/(LH σ_1)``, each part scaled to unit score spread on the training rows, then
  calibrated and given its own scale head (a plausibility prior: it trades LDS for pointing).

The last three are research variants (fit here, not shipped in ``estimators``).

    python examples/estimator_variants.py --train data2/train-a data2/train-b \
        --validation data2/validation-loo --json out/estimator_variants.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attrib.collect.store import Collection
from attrib.evaluation import POINTING_MIN_DROP, design_rows, evaluate_methods, span_metadata, train_examples
from attrib.io import atomic_write_json, jsonable
from estimators.linear import LinearHeadEstimator
from metrics.faithfulness import mean_metric

METRICS = ("lds", "r2", "pointing", "top5_drop_normalized")


class _Direction:
    """A research variant's direction: ``w(S) = Σ_j softmax(G z_S)_j W_j`` (``J = 1``: one vector), optionally
    non-negative, fit with the Pearson loss per span; then the per-span scale head, as the shipped estimator's."""

    def __init__(self, n_experts: int = 1, nonneg: bool = False, n_iter: int = 2000, lr: float = 1e-2) -> None:
        self.n_experts, self.nonneg, self.n_iter, self.lr = n_experts, nonneg, n_iter, lr

    def _w(self, w: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.softplus(w * 100) / 100 if self.nonneg else w

    def _mix(self, pj: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
        if self.n_experts == 1:
            return pj[..., 0]
        pi = torch.softmax(((mass - self.zm) / self.zs) @ self.gate, -1)
        return (pj * pi.unsqueeze(-2)).sum(-1)

    def fit(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray, mass: np.ndarray) -> _Direction:
        torch.manual_seed(0)
        g = np.unique(groups, return_inverse=True)[1]
        n_g = int(g.max()) + 1
        m = np.bincount(g)
        if not (m == m[0]).all():
            raise ValueError("every span needs the same number of removal sets")
        xt = torch.as_tensor(x).reshape(n_g, int(m[0]), -1)
        yt = torch.as_tensor(y).reshape(n_g, int(m[0]))
        zt = torch.as_tensor(mass).reshape(n_g, int(m[0]), -1)[:, 0]
        self.sd = xt.reshape(-1, xt.shape[-1]).std(0).clamp_min(1e-12)
        self.zm, self.zs = zt.mean(0), zt.std(0).clamp_min(1e-12)
        f = xt.shape[-1]
        w = (torch.randn(f, self.n_experts, dtype=torch.float64) * 0.01).requires_grad_(True)
        gate = (torch.randn(f, self.n_experts, dtype=torch.float64) * 0.01).requires_grad_(True)
        self.gate = gate
        opt = torch.optim.Adam([w, gate] if self.n_experts > 1 else [w], lr=self.lr)
        yc = yt - yt.mean(1, keepdim=True)
        ysd = yc.pow(2).mean(1).sqrt()
        valid = ysd > 1e-9
        xs = xt / self.sd
        for _ in range(self.n_iter):
            p = self._mix(xs @ self._w(w), zt)
            pc = p - p.mean(1, keepdim=True)
            corr = (pc * yc).mean(1) / (pc.pow(2).mean(1).sqrt().clamp_min(1e-12) * ysd.clamp_min(1e-12))
            loss = -corr[valid].mean()
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
        self.w = (self._w(w.detach()) / self.sd[:, None]).detach()
        self.gate = gate.detach()
        p = self._mix(xt @ self.w, zt)  # (n_g, M): scale-free direction predictions
        self._fit_head(p, yt, zt)
        return self

    def _fit_head(self, p: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> None:
        zs = (z - self.zm) / self.zs
        u = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
        c = torch.log(y.std() / p.std().clamp_min(1e-12)).detach().clone().requires_grad_(True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([u, c, b], max_iter=300, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            r = torch.exp((zs @ u + c).clamp(-30, 30))
            loss = ((r[:, None] * p + b - y) ** 2).mean() + 1e-3 * (u**2).sum()
            loss.backward()  # type: ignore[no-untyped-call]
            return loss

        opt.step(closure)  # type: ignore[no-untyped-call]
        self.u, self.c = u.detach(), c.detach()

    def region_scores(self, features: np.ndarray) -> np.ndarray:
        f = torch.as_tensor(np.asarray(features, dtype=np.float64))
        n, k = f.shape[:2]
        f = f.reshape(n, k, -1)
        mass = f.sum(1)
        scores = self._mix(f @ self.w, mass)
        r = torch.exp((((mass - self.zm) / self.zs) @ self.u + self.c).clamp(-30, 30))
        return (scores * r[:, None]).numpy()


def _prior(base: LinearHeadEstimator, lam: float, x: np.ndarray, y: np.ndarray, mass: np.ndarray) -> Any:
    """``prior_X``: the fitted direction plus ``lam`` times raw attention's (both at unit spread on ``x``),
    calibrated by least squares, with a scale head fit on it."""
    import copy

    w = np.asarray(base.coef_, dtype=np.float64).ravel()
    mean = np.full_like(w, 1.0 / w.size)
    direction = w / (x @ w).std() + lam * mean / (x @ mean).std()
    pred = x @ direction
    (s, b), *_ = np.linalg.lstsq(np.vstack([pred, np.ones_like(pred)]).T, y, rcond=None)
    est = copy.deepcopy(base)
    est.coef_ = (direction * s).reshape(base.coef_.shape)
    est.intercept_ = float(b)
    u, c, b2 = est._scale_head(x @ est.coef_.ravel(), y, mass.reshape(len(y), -1))
    est.scale_coef_, est.scale_offset_, est.span_intercept_ = u.reshape(est.coef_.shape), c, b2
    return est


def _loo_top_agreement(
    examples: list[dict[str, Any]], meta: list[dict[str, Any]], scorer: Any, n_boot: int
) -> dict[str, Any] | None:
    """On the spans the pointing game scores, the share whose top region by ``scorer(features)`` is the
    top region by leave-one-out (the region whose removal alone costs the span most); examples resampled.

    This separates two readings of pointing: a method can point at the named object more often than
    leave-one-out does (plausibility) while agreeing less with leave-one-out's own top region (faithfulness)."""
    hits: list[float] = []
    groups: list[int] = []
    for i, (ex, m) in enumerate(zip(examples, meta, strict=True)):
        if m["objects"] is None:
            return None
        scores = scorer(ex["features"])
        alld = m["all_deltas"] if m["all_deltas"] is not None else np.full(len(m["objects"]), np.inf)
        for s, (objs, a) in enumerate(zip(m["objects"], alld, strict=True)):
            if objs and abs(float(a)) > POINTING_MIN_DROP:
                hits.append(float(int(np.argmax(scores[s])) == int(np.argmax(ex["loo_deltas"][s]))))
                groups.append(i)
    if not hits:
        return None
    return mean_metric(np.asarray(hits), groups=np.asarray(groups), n_boot=n_boot).to_dict()


def _row(res: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pop, body in [("all", {"methods": res["methods"]}), *res["populations"].items()]:
        for method, metrics in body["methods"].items():
            out.setdefault(method, {})[pop] = {
                k: {f: metrics[k][f] for f in ("value", "ci_low", "ci_high", "n")} for k in METRICS if k in metrics
            }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", nargs="+", required=True, help="training collections (fit)")
    ap.add_argument("--validation", required=True, help="validation collection made with --loo and >= 35 sets")
    ap.add_argument("--json", required=True, help="write the table here")
    ap.add_argument(
        "--variants", default="shared,span_scale,span_scale_alpha1,nonneg,gated_2,gated_4,prior_0.5,prior_1"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    trains = [Collection.open(t) for t in args.train]
    val = Collection.open(args.validation)
    exs = train_examples(trains)
    d = design_rows(exs, only_correct=True)
    shape = tuple(exs[0]["features"].shape[2:])
    meta, _ = span_metadata(val)
    val_examples = list(val.examples())
    out: dict[str, Any] = {
        "train": args.train,
        "validation": args.validation,
        "validation_dataset": val.config.get("dataset"),
        "n_train_examples": d.n_examples,
        "variants": {},
    }
    ref = None
    shipped: LinearHeadEstimator | None = None  # the span_scale fit, reused by the prior_X variants
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        t0 = time.perf_counter()
        est: Any
        if name in ("shared", "span_scale", "span_scale_alpha1"):
            params: dict[str, Any] = {"span_scale": name != "shared", "layer_head_shape": shape}
            if name == "span_scale_alpha1":
                params["alpha"] = 1.0
            est = LinearHeadEstimator(**params).fit(d.x, d.y, groups=d.groups, span_mass=d.span_mass)
            if name == "span_scale":
                shipped = est
        elif name == "nonneg":
            est = _Direction(nonneg=True).fit(d.x, d.y, d.groups, d.span_mass)
        elif name.startswith("prior_"):
            if shipped is None:
                shipped = LinearHeadEstimator(span_scale=True, layer_head_shape=shape)
                shipped.fit(d.x, d.y, groups=d.groups, span_mass=d.span_mass)
            est = _prior(shipped, float(name.split("_")[1]), d.x, d.y, d.span_mass)
        elif name.startswith("gated_"):
            est = _Direction(n_experts=int(name.split("_")[1])).fit(d.x, d.y, d.groups, d.span_mass)
        else:
            raise SystemExit(f"unknown variant {name!r}")
        fit_s = time.perf_counter() - t0
        methods = ("estimator",) if ref is not None else ("estimator", "raw_attention", "leave_one_out")
        res = evaluate_methods(val, est, methods=methods, auc_steps=0, span_meta=meta, n_boot=args.n_boot)
        rows = _row(res)
        top = _loo_top_agreement(val_examples, meta, est.region_scores, args.n_boot)
        if top is not None:
            rows["estimator"]["all"]["loo_top_agreement"] = top
        if ref is None:
            ref = {m: rows[m] for m in ("raw_attention", "leave_one_out")}
            raw_top = _loo_top_agreement(
                val_examples, meta, lambda f: np.asarray(f, dtype=np.float64).mean(axis=(2, 3)), args.n_boot
            )
            if raw_top is not None:
                ref["raw_attention"]["all"]["loo_top_agreement"] = raw_top
            out["n_examples"], out["n_spans"] = res["n_examples"], res["n_spans"]
            out["rules"] = {p: b.get("rule") for p, b in res["populations"].items()}
        out["variants"][name] = {"fit_s": round(fit_s, 1), **rows["estimator"]}
        print(f"{name}: LDS {rows['estimator']['all']['lds']['value']:.3f} in {fit_s:.0f} s", file=sys.stderr)
    out["references"] = ref
    atomic_write_json(args.json, jsonable(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
