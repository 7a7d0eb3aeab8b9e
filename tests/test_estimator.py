"""The L x H linear estimator."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from estimators import LinearHeadEstimator, subset_design


def _planted(n_ex: int = 60, k: int = 12, L: int = 4, H: int = 3, m: int = 16, seed: int = 0):  # type: ignore[no-untyped-def]  # noqa: N803
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(L, H))
    xs, ys, gs = [], [], []
    for e in range(n_ex):
        feats = rng.exponential(size=(2, k, L, H)) / k
        subsets = rng.random((m, k)) < 0.5
        design = subset_design(feats, subsets)  # (2, m, F)
        y = design @ w.ravel() + 0.3 + 0.01 * rng.normal(size=(2, m))
        xs.append(design.reshape(-1, L * H))
        ys.append(y.ravel())
        gs.append(np.repeat([2 * e, 2 * e + 1], m))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(gs), w


@pytest.mark.parametrize("loss", ["ridge", "pearson"])
def test_recovers_planted_weights(loss: str) -> None:
    x, y, g, w = _planted()
    est = LinearHeadEstimator(
        loss=loss, alpha=1e-8 if loss == "ridge" else 0.0, n_iter=3000, lr=5e-3, layer_head_shape=(4, 3)
    )
    est.fit(x, y, groups=g)
    assert est.coef_.shape == (4, 3)
    assert np.corrcoef(est.coef_.ravel(), w.ravel())[0, 1] > 0.99
    np.testing.assert_allclose(est.coef_, w, rtol=0.1, atol=0.1)
    assert est.score(x, y) > 0.98


def test_region_scores_sum_to_subset_prediction() -> None:
    x, y, _, _ = _planted(n_ex=10)
    est = LinearHeadEstimator(loss="ridge", alpha=1e-8, layer_head_shape=(4, 3)).fit(x, y)
    rng = np.random.default_rng(5)
    feats = rng.exponential(size=(3, 12, 4, 3))
    subsets = rng.random((5, 12)) < 0.5
    scores = est.region_scores(feats)
    pred = est.predict(subset_design(feats, subsets).reshape(-1, 12))
    np.testing.assert_allclose(pred.reshape(3, 5), (subsets @ scores.T).T + est.intercept_, atol=1e-9)


def test_save_load_roundtrip_and_shape_refusal(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y, _, _ = _planted(n_ex=10)
    est = LinearHeadEstimator(loss="ridge", layer_head_shape=(4, 3)).fit(x, y)
    est.save(tmp_path / "est", model_id="tiny", region_method="color", ablation_mode="mask", feature_pooling="mean")
    back = LinearHeadEstimator.load(tmp_path / "est", expected_shape=(4, 3))
    np.testing.assert_array_equal(back.coef_, est.coef_)
    assert back.intercept_ == est.intercept_ and back.metadata_["region_method"] == "color"
    np.testing.assert_allclose(back.predict(x), est.predict(x))
    with pytest.raises(ValueError, match=r"L x H = 4 x 3 .* this model has 28 x 28"):
        LinearHeadEstimator.load(tmp_path / "est", expected_shape=(28, 28))
    with pytest.raises(FileNotFoundError):
        LinearHeadEstimator.load(tmp_path / "nope")


def test_bad_targets_named() -> None:
    x, y, _, _ = _planted(n_ex=4)
    y = y.copy()
    y[[3, 17]] = np.nan
    with pytest.raises(ValueError, match=r"NaN/inf at rows \[3, 17\]"):
        LinearHeadEstimator(loss="ridge").fit(x, y)
    with pytest.raises(ValueError, match="empty targets"):
        LinearHeadEstimator(loss="ridge").fit(np.zeros((0, 12)), np.zeros(0))


def test_clone_and_params() -> None:
    est = LinearHeadEstimator(loss="ridge", alpha=0.5)
    c = clone(est)
    assert c.get_params() == est.get_params() and not hasattr(c, "coef_")
    with pytest.raises(Exception, match="not fitted"):
        est.predict(np.zeros((2, 3)))


@parametrize_with_checks([LinearHeadEstimator(loss="ridge"), LinearHeadEstimator(loss="pearson", n_iter=50)])
def test_sklearn_checks(estimator, check) -> None:  # type: ignore[no-untyped-def]
    check(estimator)
