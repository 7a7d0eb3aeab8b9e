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


def _planted_magnitudes(n_ex: int = 80, k: int = 12, L: int = 4, H: int = 3, m: int = 16, seed: int = 1):  # type: ignore[no-untyped-def]  # noqa: N803
    """Spans whose drops are w-scores times a span factor exp(<u, mass>) that a shared calibration cannot carry."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=L * H)
    u = np.zeros(L * H)
    u[0], u[5] = 3.0, -2.0
    xs, ys, gs, ms, feats_all = [], [], [], [], []
    for e in range(n_ex):
        feats = rng.exponential(size=(2, k, L, H)) / k * rng.uniform(0.2, 2.0, size=(2, 1, 1, 1))
        subsets = rng.random((m, k)) < 0.5
        design = subset_design(feats, subsets)  # (2, m, F)
        mass = feats.reshape(2, k, -1).sum(1)  # (2, F)
        r = np.exp(mass @ u - 1.0)
        y = r[:, None] * (design @ w) + 0.01 * rng.normal(size=(2, m))
        xs.append(design.reshape(-1, L * H))
        ys.append(y.ravel())
        gs.append(np.repeat([2 * e, 2 * e + 1], m))
        ms.append(np.repeat(mass, m, axis=0))
        feats_all.append(feats)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(gs), np.concatenate(ms), np.concatenate(feats_all)


def test_span_scale_recovers_magnitudes_and_keeps_rankings() -> None:
    x, y, g, mass, feats = _planted_magnitudes()
    plain = LinearHeadEstimator(loss="pearson", n_iter=1500, lr=5e-3, alpha=0.0, layer_head_shape=(4, 3))
    plain.fit(x, y, groups=g)
    scaled = LinearHeadEstimator(
        loss="pearson", n_iter=1500, lr=5e-3, alpha=0.0, layer_head_shape=(4, 3), span_scale=True
    ).fit(x, y, groups=g, span_mass=mass)
    # the direction is the same fit; the head only rescales spans, so every span's ranking of regions is kept
    np.testing.assert_allclose(scaled.coef_, plain.coef_)
    s_plain, s_scaled = plain.region_scores(feats), scaled.region_scores(feats)
    assert (np.argsort(s_plain, axis=1) == np.argsort(s_scaled, axis=1)).all()
    # magnitudes: the shared calibration explains the pooled drops poorly, the head nearly perfectly
    resid_plain = y - plain.predict(x)
    resid_scaled = y - scaled.predict(x, span_mass=mass)
    assert 1 - resid_scaled.var() / y.var() > 0.97
    assert 1 - resid_plain.var() / y.var() < 0.8
    # the recovered head: factors proportional to the planted ones across spans
    true_r = np.exp(feats.reshape(len(feats), 12, -1).sum(1) @ np.r_[3.0, 0, 0, 0, 0, -2.0, np.zeros(6)])
    got_r = scaled.span_factor(feats.sum(axis=1))
    assert np.corrcoef(np.log(true_r), np.log(got_r))[0, 1] > 0.95
    # predict == region scores summed over the removal set + the scaled intercept
    subsets = np.random.default_rng(3).random((5, 12)) < 0.5
    design = subset_design(feats[:4], subsets).reshape(-1, 12)
    rows_mass = np.repeat(feats[:4].sum(axis=1).reshape(4, -1), 5, axis=0)
    pred = scaled.predict(design, span_mass=rows_mass).reshape(4, 5)
    np.testing.assert_allclose(pred, (subsets @ s_scaled[:4].T).T + scaled.span_intercept_, atol=1e-9)


def test_span_scorer_equals_region_scores() -> None:
    """The streaming path's one-span scorer gives region_scores' values, with and without a scale head."""
    x, y, _g, mass, feats = _planted_magnitudes(n_ex=20)
    scaled = LinearHeadEstimator(loss="ridge", layer_head_shape=(4, 3), span_scale=True).fit(x, y, span_mass=mass)
    plain = LinearHeadEstimator(loss="ridge", layer_head_shape=(4, 3)).fit(x, y)
    for est in (scaled, plain):
        scorer = est.span_scorer()
        for f in feats[:6].astype(np.float32):  # features arrive as float32
            np.testing.assert_allclose(scorer(f), est.region_scores(f[None])[0], rtol=1e-12, atol=1e-15)
    # the factor matters: without it the scaled estimator's scores would differ
    f = feats[0].astype(np.float32)
    assert not np.allclose(scaled.span_scorer()(f), f.reshape(len(f), -1) @ scaled.coef_.reshape(-1))
    with pytest.raises(ValueError, match="L x H"):
        scaled.span_scorer()(np.zeros((5, 3, 4), dtype=np.float32))
    scorer = plain.span_scorer()
    before = scorer(f)
    plain.fit(x, -y)  # refit: the scorer keeps the weights it was made with
    np.testing.assert_array_equal(scorer(f), before)


def test_span_scale_part_scores_use_the_whole_span() -> None:
    x, y, _g, mass, feats = _planted_magnitudes(n_ex=20)
    est = LinearHeadEstimator(loss="ridge", layer_head_shape=(4, 3), span_scale=True).fit(x, y, span_mass=mass)
    part = feats[:3] * 0.25
    whole = est.region_scores(part, span_features=feats[:3])
    np.testing.assert_allclose(whole, 0.25 * est.region_scores(feats[:3]), rtol=1e-12)
    assert not np.allclose(est.region_scores(part), whole)  # its own (smaller) mass gives another factor
    with pytest.raises(ValueError, match="span_features have shape"):
        est.region_scores(part, span_features=feats[:2])


def test_span_scale_needs_mass_and_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y, _g, mass, feats = _planted_magnitudes(n_ex=20)
    with pytest.raises(ValueError, match="span_scale=True needs span_mass"):
        LinearHeadEstimator(loss="ridge", span_scale=True).fit(x, y)
    with pytest.raises(ValueError, match="span_mass has 6 features per row, X has 12"):
        LinearHeadEstimator(loss="ridge", span_scale=True).fit(x, y, span_mass=mass[:, :6])
    bad = mass.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="span_mass holds NaN"):
        LinearHeadEstimator(loss="ridge", span_scale=True).fit(x, y, span_mass=bad)
    est = LinearHeadEstimator(loss="ridge", layer_head_shape=(4, 3), span_scale=True).fit(x, y, span_mass=mass)
    est.save(tmp_path / "est", model_id="tiny")
    back = LinearHeadEstimator.load(tmp_path / "est")
    np.testing.assert_array_equal(back.scale_coef_, est.scale_coef_)
    assert back.scale_offset_ == est.scale_offset_ and back.span_intercept_ == est.span_intercept_
    np.testing.assert_allclose(back.region_scores(feats), est.region_scores(feats))
    np.testing.assert_allclose(back.predict(x, span_mass=mass), est.predict(x, span_mass=mass))
    with pytest.raises(ValueError, match=r"span_mass has 5 rows for \d+ design rows"):
        est.predict(x, span_mass=mass[:5])
    with pytest.raises(ValueError, match="span masses have 6 features per span, the scale head expects 12"):
        est.predict(x, span_mass=mass[:, :6])
    # an estimator without the head loads without one (older files) and scales nothing
    LinearHeadEstimator(loss="ridge", layer_head_shape=(4, 3)).fit(x, y).save(tmp_path / "plain")
    plain = LinearHeadEstimator.load(tmp_path / "plain")
    assert plain.scale_coef_ is None
    np.testing.assert_array_equal(plain.span_factor(feats.sum(axis=1)), np.ones(len(feats)))


def test_calibration_never_reverses_the_fitted_direction(caplog: pytest.LogCaptureFixture) -> None:
    """Spans whose drops are large where predictions are small make the pooled slope negative while every
    span's drops rise with the prediction; the calibration must keep the direction (a negative scale would
    reverse every span's ranking), and reports when even the within-span slope is not positive."""
    rng = np.random.default_rng(0)
    xs, ys, gs = [], [], []
    for span in range(40):
        big = span % 2 == 0
        x = rng.uniform(0, 1, size=(16, 3)) * [1.0, 0.1, 0.1] + [0.0 if big else 10.0, 0.0, 0.0]  # 2 noise columns
        y = (x[:, 0] - x[:, 0].mean()) + (20.0 if big else 0.0)
        xs.append(x)
        ys.append(y)
        gs.append(np.full(16, span))
    x, y, g = np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)
    assert np.corrcoef(x[:, 0], y)[0, 1] < -0.5  # pooled, the feature predicts the drops backwards
    est = LinearHeadEstimator(n_iter=500, lr=1e-2).fit(x, y, groups=g)
    assert est.coef_.ravel()[0] > 0
    pred = est.predict(x)
    for span in range(40):
        m = g == span
        assert np.corrcoef(pred[m], y[m])[0, 1] > 0.99
    # a direction that does not track the drops within spans still gets a positive scale, with a warning
    with caplog.at_level("WARNING", logger="estimators.linear"):
        s, _ = LinearHeadEstimator._within_scale(np.arange(8.0), -np.arange(8.0), np.zeros(8, dtype=np.int64))
    assert s > 0 and "does not track the drops within spans" in caplog.text
