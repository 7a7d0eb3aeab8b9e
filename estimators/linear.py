"""The amortized L x H linear estimator: ``score(S, k) = <w, f_{S,k}>``, fit once per model.

Training samples are (span, removal set) pairs: the input is the summed
features of the removed regions, ``x = Σ_{k∈V} f_{S,k}`` (flattened L·H), and
the target is the measured drop ``Δ(S, V)``. Because the model is linear,
``Δ̂(S, V) = Σ_{k∈V} score(S, k) + b``.

Losses:

- ``"pearson"`` (the paper's and AT2's): maximise the mean over spans of the
  Pearson correlation between predicted and actual drops across that span's
  removal sets (Adam, lr 1e-3 by default). Correlation ignores scale, so a final
  least-squares calibration maps scores to drop units.
- ``"ridge"``: closed-form ridge regression on the pooled samples.

Magnitude (``span_scale=True``): one weight vector ranks a span's regions, but spans differ by orders of
magnitude in how much they depend on the image, and span features are means over tokens, so
``<w, f>`` carries no magnitude. The scale head multiplies a span's scores by a positive factor
``r(S) = exp(<u, m_S> + c)`` read from the span's own features, ``m_S = Σ_k f_{S,k}`` (the image
attention mass of each layer and head), fit by least squares on the measured drops after ``w``.
Being positive and per span, it leaves every ranking (LDS, top-K, pointing, insertion/deletion)
unchanged and carries the magnitudes that pooled metrics such as R² need. Inference stays arithmetic
on captured features.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["LinearHeadEstimator", "SpanScorer", "subset_design"]

logger = logging.getLogger(__name__)

VERSION = "0.1.0"


def subset_design(features: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    """Design rows for one example.

    Args:
        features: ``(n_spans, K, L, H)`` span features.
        subsets: ``(M, K)`` boolean removal sets.

    Returns:
        ``(n_spans, M, L*H)``: for span s and set j, the summed features of the removed regions.
    """
    f = np.asarray(features, dtype=np.float64)
    s = np.asarray(subsets, dtype=np.float64)
    n, k = f.shape[:2]
    return np.einsum("mk,nkf->nmf", s, f.reshape(n, k, -1))


class LinearHeadEstimator(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """Linear map from L x H attention features to causal drops (scikit-learn conventions).

    Args:
        loss: ``"pearson"`` or ``"ridge"``.
        alpha: Ridge penalty (``ridge``) or L2 weight decay (``pearson``).
        lr: Adam learning rate (``pearson``).
        n_iter: Full-batch Adam steps (``pearson``).
        layer_head_shape: ``(L, H)``; ``coef_`` takes this shape. When ``None``, a 3-D
            input ``(n, L, H)`` sets it, and 2-D input gives ``coef_`` of shape ``(1, F)``.
        random_state: Initialisation seed (``pearson``).
        span_scale: Also fit the per-span scale head (see the module docstring); ``fit`` then needs
            ``span_mass``.
        scale_alpha: L2 penalty of the scale head's standardised weights.

    Attributes:
        coef_: ``(L, H)`` weights, in drop units (one calibration shared by all spans).
        intercept_: Bias ``b`` of ``X @ w + b``.
        n_features_in_: ``L * H``.
        scale_coef_: ``(L, H)`` weights ``u`` of the scale head (``None`` without it).
        scale_offset_: Its offset ``c``.
        span_intercept_: Bias of the scaled prediction ``r(S) · X @ w + b'``.
    """

    #: Bound on the scale head's exponent (a factor of e^±30 is far outside any fitted range).
    SCALE_EXP_BOUND = 30.0

    def __init__(
        self,
        *,
        loss: Literal["pearson", "ridge"] = "pearson",
        alpha: float = 1e-4,
        lr: float = 1e-3,
        n_iter: int = 2000,
        layer_head_shape: tuple[int, int] | None = None,
        random_state: int = 0,
        span_scale: bool = False,
        scale_alpha: float = 1e-3,
    ) -> None:
        self.loss = loss
        self.alpha = alpha
        self.lr = lr
        self.n_iter = n_iter
        self.layer_head_shape = layer_head_shape
        self.random_state = random_state
        self.span_scale = span_scale
        self.scale_alpha = scale_alpha

    # ------------------------------------------------------------ fitting
    def fit(self, X: Any, y: Any, groups: Any = None, span_mass: Any = None) -> LinearHeadEstimator:
        """Fit on design rows ``X`` (``(n, F)`` or ``(n, L, H)``) and drops ``y``.

        Args:
            X: Summed removed-region features per (span, removal set).
            y: Measured drops.
            groups: Span ids; the Pearson loss correlates within each group
                (all rows form one group when ``None``).
            span_mass: Per row, its span's features summed over all regions (``(n, F)`` or
                ``(n, L, H)``); needed with ``span_scale``, ignored without.

        Returns:
            self

        Raises:
            ValueError: On NaN/empty targets (naming the offending rows), an unknown loss, or
                ``span_scale`` without a matching ``span_mass``.
        """
        shape = self.layer_head_shape
        x_arr = np.asarray(X)
        if x_arr.ndim == 3:
            shape = (int(x_arr.shape[1]), int(x_arr.shape[2]))
            X = x_arr.reshape(x_arr.shape[0], -1)
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        y_arr = np.asarray(y)
        if y_arr.size == 0:
            raise ValueError("empty targets: nothing to fit")
        if np.issubdtype(y_arr.dtype, np.number) and not np.iscomplexobj(y_arr):
            bad = np.nonzero(~np.isfinite(y_arr.astype(np.float64)))[0]
            if bad.size:
                raise ValueError(f"targets hold NaN/inf at rows {bad[:10].tolist()}{'...' if bad.size > 10 else ''}")
        mass = None
        if self.span_scale:
            if span_mass is None:
                raise ValueError("span_scale=True needs span_mass: per row, its span's features summed over regions")
            mass = np.asarray(span_mass, dtype=np.float64).reshape(len(y_arr), -1)
            if not np.isfinite(mass).all():
                raise ValueError("span_mass holds NaN/inf")
        X, y_arr = validate_data(self, X, y, y_numeric=True)
        y_arr = np.asarray(y_arr, dtype=np.float64)
        if mass is not None and mass.shape[1] != X.shape[1]:
            raise ValueError(f"span_mass has {mass.shape[1]} features per row, X has {X.shape[1]}")
        if self.loss == "ridge":
            w, b = self._ridge(X, y_arr)
        elif self.loss == "pearson":
            w, b = self._pearson(X, y_arr, groups)
        else:
            raise ValueError(f"unknown loss {self.loss!r}; choose 'pearson' or 'ridge'")
        f = X.shape[1]
        self._shape = shape if shape is not None and shape[0] * shape[1] == f else (1, f)
        self.coef_ = w.reshape(self._shape)
        self.intercept_ = float(b)
        self.scale_coef_: np.ndarray | None = None
        self.scale_offset_ = 0.0
        self.span_intercept_ = float(b)
        if mass is not None:
            u, c, b2 = self._scale_head(X @ w, y_arr, mass)
            self.scale_coef_, self.scale_offset_, self.span_intercept_ = u.reshape(self._shape), c, b2
        return self

    def _scale_head(self, pred: np.ndarray, y: np.ndarray, mass: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Least-squares fit of ``y ≈ exp(<u, m> + c) · pred + b`` from ``u = 0, c = 0`` (the shared calibration)."""
        import torch

        mu, sd = mass.mean(0), mass.std(0)
        sd = np.where(sd > 1e-12, sd, 1.0)
        z = torch.as_tensor((mass - mu) / sd, dtype=torch.float64)
        p = torch.as_tensor(pred, dtype=torch.float64)
        yt = torch.as_tensor(y, dtype=torch.float64)
        u = torch.zeros(mass.shape[1], dtype=torch.float64, requires_grad=True)
        c = torch.zeros((), dtype=torch.float64, requires_grad=True)
        b = torch.tensor(float(self.intercept_), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([u, c, b], max_iter=300, line_search_fn="strong_wolfe")
        bound = self.SCALE_EXP_BOUND

        def closure() -> torch.Tensor:
            opt.zero_grad()
            r = torch.exp((z @ u + c).clamp(-bound, bound))
            loss = ((r * p + b - yt) ** 2).mean() + self.scale_alpha * (u**2).sum()
            loss.backward()  # type: ignore[no-untyped-call]
            return loss

        opt.step(closure)  # type: ignore[no-untyped-call]
        u_raw = u.detach().numpy() / sd
        return u_raw, float(c.detach()) - float(u_raw @ mu), float(b.detach())

    def span_factor(self, mass: np.ndarray) -> np.ndarray:
        """The scale head's factor ``r(S)`` per span from its summed features ``(n, L, H)`` or ``(n, F)``
        (ones without a scale head)."""
        m = np.asarray(mass, dtype=np.float64)
        m = m.reshape(m.shape[0], -1)
        u = getattr(self, "scale_coef_", None)
        if u is None:
            return np.ones(m.shape[0])
        n_u = np.asarray(u).size
        if m.shape[1] != n_u:
            raise ValueError(f"span masses have {m.shape[1]} features per span, the scale head expects {n_u}")
        b = self.SCALE_EXP_BOUND
        return np.asarray(np.exp(np.clip(m @ np.asarray(u).reshape(-1) + self.scale_offset_, -b, b)))

    def _ridge(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        xm, ym = x.mean(0), y.mean()
        xc = x - xm
        a = xc.T @ xc + self.alpha * len(y) * np.eye(x.shape[1])
        w = np.linalg.solve(a, xc.T @ (y - ym))
        return w, float(ym - xm @ w)

    def _pearson(self, x: np.ndarray, y: np.ndarray, groups: Any) -> tuple[np.ndarray, float]:
        import torch

        g = (
            np.zeros(len(y), dtype=np.int64)
            if groups is None
            else np.unique(np.asarray(groups), return_inverse=True)[1]
        )
        n_g = int(g.max()) + 1
        xt = torch.as_tensor(x, dtype=torch.float64)
        yt = torch.as_tensor(y, dtype=torch.float64)
        gt = torch.as_tensor(g)
        counts = torch.bincount(gt, minlength=n_g).double()
        scale = xt.std(0).clamp_min(1e-12)
        xs = xt / scale
        gen = torch.Generator().manual_seed(self.random_state)
        w = (torch.randn(x.shape[1], generator=gen, dtype=torch.float64) * 0.01).requires_grad_(True)
        opt = torch.optim.Adam([w], lr=self.lr)

        def gmean(v: torch.Tensor) -> torch.Tensor:
            return torch.zeros(n_g, dtype=v.dtype).index_add_(0, gt, v) / counts

        yc = yt - gmean(yt)[gt]
        ysd = torch.sqrt(gmean(yc**2)).clamp_min(1e-12)
        valid = (counts > 2) & (ysd > 1e-9)
        if not bool(valid.any()):
            raise ValueError(
                f"pearson loss needs a group with >= 3 samples and non-constant targets; got n_samples = {len(y)}"
            )
        for _ in range(self.n_iter):
            p = xs @ w
            pc = p - gmean(p)[gt]
            psd = torch.sqrt(gmean(pc**2)).clamp_min(1e-12)
            corr = gmean(pc * yc) / (psd * ysd)
            loss = -corr[valid].mean() + self.alpha * (w**2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        direction = (w.detach() / scale).numpy()
        pred = x @ direction
        # Calibrate scale and offset to drop units by least squares.
        a = np.vstack([pred, np.ones_like(pred)]).T
        (s, b), *_ = np.linalg.lstsq(a, y, rcond=None)
        if not s > 0:
            # The pooled slope can be negative while the direction correlates positively within spans (spans of
            # large drops with small predictions, say); a negative scale would reverse every span's ranking.
            # Calibrate on within-span variation instead, which is what the loss fit.
            s, b = self._within_scale(pred, y, g)
        return direction * s, float(b)

    @staticmethod
    def _within_scale(pred: np.ndarray, y: np.ndarray, g: np.ndarray) -> tuple[float, float]:
        """A positive scale from within-span variation (each span centred): the least-squares slope, or the ratio
        of spreads when that slope is not positive either; the offset matches the means."""
        counts = np.bincount(g).astype(np.float64)
        pc = pred - (np.bincount(g, weights=pred) / counts)[g]
        yc = y - (np.bincount(g, weights=y) / counts)[g]
        den = float(pc @ pc)
        s = float(pc @ yc) / den if den > 0 else 0.0
        if not s > 0:
            logger.warning(
                "estimator calibration: the fitted direction does not track the drops within spans "
                "(within-span slope %.3g); scaled by the ratio of spreads instead",
                s,
            )
            s = float(np.sqrt((yc @ yc) / den)) if den > 0 else 1.0
        return s, float(y.mean() - s * pred.mean())

    # ------------------------------------------------------------ prediction
    def predict(self, X: Any, span_mass: Any = None) -> np.ndarray:
        """Predicted drops for design rows ``(n, F)`` or ``(n, L, H)``: ``X @ w + b``, or with a scale head and
        ``span_mass`` (per row, its span's features summed over regions) ``r(S) · X @ w + b'``."""
        check_is_fitted(self, "coef_")
        x_arr = np.asarray(X)
        if x_arr.ndim == 3:
            X = x_arr.reshape(x_arr.shape[0], -1)
        X = validate_data(self, X, reset=False)
        base = X @ self.coef_.ravel()
        if span_mass is None or getattr(self, "scale_coef_", None) is None:
            return np.asarray(base + self.intercept_)
        mass = np.asarray(span_mass, dtype=np.float64)
        if mass.shape[0] != len(base):
            raise ValueError(f"span_mass has {mass.shape[0]} rows for {len(base)} design rows")
        return np.asarray(self.span_factor(mass) * base + self.span_intercept_)

    def region_scores(self, features: np.ndarray, *, span_features: np.ndarray | None = None) -> np.ndarray:
        """Per-region scores ``r(S) · <w, f_{S,k}>`` for features ``(n_spans, K, L, H)`` -> ``(n_spans, K)``.

        Args:
            features: The spans' per-region features.
            span_features: Features ``(n_spans, K, L, H)`` the scale head reads (default ``features``); pass
                the whole span's when ``features`` is a part of them (e.g. one key part), so the part is
                scaled as its span is. Without a scale head ``r(S) = 1``.
        """
        if getattr(self, "coef_", None) is None:  # called once per streamed span: sklearn's full check costs more
            check_is_fitted(self, "coef_")  # raises sklearn's NotFittedError
        coef = np.asarray(self.coef_)
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 4 or f.shape[2:] != coef.shape:
            raise ValueError(f"features have L x H = {f.shape[2:]}, the estimator expects {tuple(coef.shape)}")
        scores = f.reshape(f.shape[0], f.shape[1], -1) @ coef.reshape(-1)
        if getattr(self, "scale_coef_", None) is None:
            return scores
        src = f if span_features is None else np.asarray(span_features, dtype=np.float64)
        if src.shape[0] != f.shape[0] or src.shape[2:] != coef.shape:
            raise ValueError(f"span_features have shape {src.shape}; expected ({f.shape[0]}, K, *{tuple(coef.shape)})")
        return scores * self.span_factor(src.sum(axis=1))[:, None]

    def span_scorer(self) -> SpanScorer:
        """A scorer of one span at a time with the current weights, for the streaming path.

        ``scorer(f)`` for one span's features ``(K, L, H)`` equals ``region_scores(f[None])[0]`` (to float64
        rounding) in one matrix product: the region scores and the scale head's per-region terms come out of
        the same product. Weights are read now; refitting the estimator later does not change the scorer.
        """
        check_is_fitted(self, "coef_")
        return SpanScorer(
            np.asarray(self.coef_, dtype=np.float64),
            getattr(self, "scale_coef_", None),
            float(getattr(self, "scale_offset_", 0.0)),
            self.SCALE_EXP_BOUND,
        )

    # ------------------------------------------------------------ persistence
    def save(self, path: str | Path, **metadata: Any) -> None:
        """Write ``<path>.safetensors`` (weights) and ``<path>.json`` (metadata).

        Args:
            path: Path stem.
            **metadata: Recorded beside the weights, e.g. ``model_id``, ``region_method``,
                ``ablation_mode``, ``feature_pooling``.
        """
        from safetensors.numpy import save_file

        check_is_fitted(self, "coef_")
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp.safetensors")
        tensors = {"coef": np.ascontiguousarray(self.coef_, dtype=np.float64)}
        scale = getattr(self, "scale_coef_", None)
        if scale is not None:
            tensors["scale_coef"] = np.ascontiguousarray(scale, dtype=np.float64)
        save_file(tensors, str(tmp))
        tmp.replace(p.with_suffix(".safetensors"))
        meta = {
            "L": int(self.coef_.shape[0]),
            "H": int(self.coef_.shape[1]),
            "intercept": self.intercept_,
            **({} if scale is None else {"scale_offset": self.scale_offset_, "span_intercept": self.span_intercept_}),
            "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.get_params().items()},
            "version": VERSION,
            **metadata,
        }
        tmp_json = p.with_name(p.name + ".tmp.json")
        tmp_json.write_text(json.dumps(meta, indent=1) + "\n")
        tmp_json.replace(p.with_suffix(".json"))

    @classmethod
    def load(cls, path: str | Path, *, expected_shape: tuple[int, int] | None = None) -> LinearHeadEstimator:
        """Load an estimator saved by [`save`][estimators.linear.LinearHeadEstimator.save] (safetensors + JSON; nothing
        is unpickled).

        Args:
            path: Path stem.
            expected_shape: ``(L, H)`` of the model it will be used with; a mismatch is refused.

        Raises:
            FileNotFoundError: If a file is missing.
            ValueError: If the shape does not match ``expected_shape``, the files disagree, or either file is
                not what [`save`][estimators.linear.LinearHeadEstimator.save] writes (a pickle, say).
        """
        from safetensors.numpy import load_file

        p = Path(path)
        for f in (p.with_suffix(".safetensors"), p.with_suffix(".json")):
            if not f.is_file():
                raise FileNotFoundError(f"estimator file not found: {f}")
        try:
            meta = json.loads(p.with_suffix(".json").read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"estimator metadata {p.with_suffix('.json')} is not valid JSON: {e}") from None
        if not isinstance(meta, dict) or not {"L", "H", "intercept", "params"} <= set(meta):
            raise ValueError(
                f"estimator metadata {p.with_suffix('.json')} lacks L, H, intercept or params: not an estimator file"
            )
        try:
            tensors = load_file(str(p.with_suffix(".safetensors")))
        except Exception as e:  # safetensors raises its own error type for anything that is not safetensors
            raise ValueError(
                f"estimator weights {p.with_suffix('.safetensors')} are not a safetensors file "
                f"({' '.join(str(e).split())}); estimators are saved by `attrib fit` (never pickles)"
            ) from None
        if "coef" not in tensors:
            raise ValueError(f"estimator weights {p.with_suffix('.safetensors')} hold no 'coef' tensor")
        coef = tensors["coef"]
        if coef.shape != (meta["L"], meta["H"]):
            raise ValueError(
                f"estimator {p}: weights {coef.shape} disagree with metadata L x H = {meta['L']} x {meta['H']}"
            )
        if expected_shape is not None and tuple(coef.shape) != tuple(expected_shape):
            raise ValueError(
                f"estimator {p} was fit for a model with L x H = {coef.shape[0]} x {coef.shape[1]} "
                f"(model {meta.get('model_id', '?')}), but this model has {expected_shape[0]} x {expected_shape[1]}"
            )
        params = dict(meta["params"])
        if params.get("layer_head_shape") is not None:
            params["layer_head_shape"] = tuple(params["layer_head_shape"])
        est = cls(**params)
        est.coef_ = coef
        est.intercept_ = float(meta["intercept"])
        est.n_features_in_ = coef.size
        est._shape = tuple(coef.shape)
        est.scale_coef_ = None
        est.scale_offset_ = 0.0
        est.span_intercept_ = est.intercept_
        if "scale_coef" in tensors:
            sc = tensors["scale_coef"]
            if sc.shape != coef.shape or not {"scale_offset", "span_intercept"} <= set(meta):
                raise ValueError(
                    f"estimator {p}: scale head {sc.shape} or its offsets disagree with L x H {coef.shape}"
                )
            est.scale_coef_ = sc
            est.scale_offset_ = float(meta["scale_offset"])
            est.span_intercept_ = float(meta["span_intercept"])
        est.metadata_ = {k: v for k, v in meta.items() if k not in ("params",)}
        return est


class SpanScorer:
    """One span's region scores from its ``(K, L, H)`` features, as
    [`LinearHeadEstimator.region_scores`][estimators.linear.LinearHeadEstimator.region_scores] computes them.

    Made by [`LinearHeadEstimator.span_scorer`][estimators.linear.LinearHeadEstimator.span_scorer]. A streamed
    span's scores are made on generation's path right after a forward pass, where every array operation runs on
    cold caches: one product with the stacked ``[w, u]`` gives each region's score and its scale-head term, so a
    span costs a handful of operations instead of the general method's checks and conversions.

    Args:
        coef: ``(L, H)`` weights ``w``.
        scale_coef: ``(L, H)`` scale-head weights ``u``, or ``None`` (no scale head: ``r(S) = 1``).
        scale_offset: The scale head's offset ``c``.
        bound: Bound on the scale head's exponent, as the estimator clips it.
    """

    def __init__(self, coef: np.ndarray, scale_coef: np.ndarray | None, scale_offset: float, bound: float) -> None:
        self.shape = tuple(np.shape(coef))
        cols = [np.asarray(coef, dtype=np.float64).reshape(-1)]
        if scale_coef is not None:
            cols.append(np.asarray(scale_coef, dtype=np.float64).reshape(-1))
        self._w = np.ascontiguousarray(np.stack(cols, 1))  # (L*H, 1 or 2)
        self._scaled = scale_coef is not None
        self._offset = float(scale_offset)
        self._bound = float(bound)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """``(K,)`` float64 scores of one span's ``(K, L, H)`` features.

        Raises:
            ValueError: If the features' ``(L, H)`` is not the estimator's.
        """
        if features.shape[1:] != self.shape:
            raise ValueError(f"features have L x H = {features.shape[1:]}, the estimator expects {self.shape}")
        a = features.reshape(features.shape[0], -1) @ self._w  # (K, 1 or 2): scores, scale-head terms
        if not self._scaled:
            return a[:, 0]
        z = float(a[:, 1].sum()) + self._offset  # <u, m_S> + c with m_S = sum over regions
        return a[:, 0] * math.exp(min(max(z, -self._bound), self._bound))
