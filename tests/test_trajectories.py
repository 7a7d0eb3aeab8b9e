"""Trajectory metrics, the flagger, hallucination labels and the ``trajectories`` analysis.

Hand-computed geometry, cases that must score low (no difference -> no
signal), planted signals that must be found, and an end-to-end run on a small
collection written in the real shard format.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from attrib.analysis.trajectories import Chain, analyse, analyse_chains, load_chains
from attrib.cli.trajectories import register, run
from attrib.plots import trajectories_html
from attrib.plots import trajectory_plots as write_plots
from attrib.shapes import make_example
from attrib.shapes.hallucination import names_absent_object, object_mentions, scene_for
from attrib.shapes.scene import COLOURS, SHAPES, SIZES, Scene, ShapeObject
from metrics import (
    TortuosityFlagger,
    TrajectoryPCA,
    auc_by_progress,
    bonferroni,
    compare_outcomes,
    concentration,
    effect_vectors,
    holm,
    length_adjusted,
    mann_whitney_power,
    net_displacement,
    path_length,
    persistence,
    prefix,
    progress_curve,
    roc_auc,
    three_outcome,
    tortuosity,
)

K = 16


# ---------------------------------------------------------------------------- chain generators
def _directed(rng: np.random.Generator, n: int, k: int = K, noise: float = 0.05) -> np.ndarray:
    """A chain that moves steadily from one region's attribution to another's (low tortuosity)."""
    a, b = rng.choice(k, 2, replace=False)
    t = np.linspace(0, 1, n)[:, None]
    start, end = np.eye(k)[a], np.eye(k)[b]
    return (1 - t) * start + t * end + noise * rng.normal(size=(n, k))


def _wandering(rng: np.random.Generator, n: int, k: int = K) -> np.ndarray:
    """A chain whose attribution jumps to a new random region mix at every span (high tortuosity)."""
    return rng.normal(size=(n, k))


def _fixated(rng: np.random.Generator, n: int, k: int = K) -> np.ndarray:
    """A chain that stays on one region throughout (hallucination-like fixation)."""
    r = int(rng.integers(k))
    return 5.0 * np.eye(k)[r][None, :] + 0.05 * np.abs(rng.normal(size=(n, k)))


# ---------------------------------------------------------------------------- representation
def test_effect_vectors_top_and_normalisation() -> None:
    s = np.array([[3.0, -4.0, 1.0, 0.5], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    e = effect_vectors(s, top=2, normalize=False)
    assert e.shape == s.shape  # K stays fixed
    np.testing.assert_allclose(e[0], [3.0, -4.0, 0.0, 0.0])  # the two largest |values| kept, sign kept
    np.testing.assert_allclose(e[2], [1.0, 1.0, 0.0, 0.0])  # ties: lower region index kept
    en = effect_vectors(s, top=2)
    np.testing.assert_allclose(en[0], [0.6, -0.8, 0.0, 0.0])
    np.testing.assert_allclose(en[1], 0.0)  # an all-zero span stays zero, no NaN
    np.testing.assert_allclose(effect_vectors(s, top=32, normalize=False), s)  # top >= K keeps everything
    with pytest.raises(ValueError, match="NaN"):
        effect_vectors(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="top"):
        effect_vectors(s, top=0)


def test_prefix_rule() -> None:
    pts = np.arange(20.0).reshape(10, 2)
    assert prefix(pts, 0.3).shape[0] == 3  # ceil(0.3 * 10) = 3 despite 0.3 * 10 = 3.0000000000000004
    assert prefix(pts, 0.25).shape[0] == 3
    assert prefix(pts, 0.1).shape[0] == 2  # at least 2
    assert prefix(pts, 1.0).shape[0] == 10
    assert prefix(pts[:1], 0.5).shape[0] == 1  # never more than there is
    np.testing.assert_array_equal(prefix(pts, 0.5), pts[:5])
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError):
            prefix(pts, bad)


# ---------------------------------------------------------------------------- geometry
def test_straight_line_has_tortuosity_one() -> None:
    line = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    assert path_length(line) == pytest.approx(3.0)
    assert net_displacement(line) == pytest.approx(3.0)
    assert tortuosity(line) == 1.0
    # Rounding noise around a straight 2-point path is snapped to exactly 1 (so ranks tie).
    rng = np.random.default_rng(0)
    assert {tortuosity(rng.normal(size=(2, 32))) for _ in range(50)} == {1.0}


def test_square_path_hand_values() -> None:
    # Three sides of a unit square: length 3, displacement 1.
    sq = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    assert path_length(sq) == pytest.approx(3.0)
    assert net_displacement(sq) == pytest.approx(1.0)
    assert tortuosity(sq) == pytest.approx(3.0)
    # A 3-4-5 zigzag: length 3 + 4 = 7, displacement 5.
    z = np.array([[0.0, 0.0], [3.0, 0.0], [3.0, 4.0]])
    assert tortuosity(z) == pytest.approx(7 / 5)
    # Back and forth on a line: 0 -> 2 -> 0 -> 1 has length 2 + 2 + 1 = 5 and displacement 1.
    bf = np.array([[0.0], [2.0], [0.0], [1.0]])
    assert path_length(bf) == pytest.approx(5.0) and tortuosity(bf) == pytest.approx(5.0)


def test_tortuosity_edge_cases() -> None:
    assert math.isnan(tortuosity(np.zeros((1, 3))))  # < 2 points: undefined
    assert path_length(np.zeros((1, 3))) == 0.0 and net_displacement(np.zeros((1, 3))) == 0.0
    assert tortuosity(np.ones((5, 3))) == 1.0  # no movement: straight by convention
    loop = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])  # back to the start
    t = tortuosity(loop, eps=1e-6)
    assert math.isfinite(t) and t == pytest.approx((2 + math.sqrt(2)) / 1e-6)
    assert t > tortuosity(np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.1, 0.0]]))


def test_concentration_hand_values() -> None:
    onehot = np.zeros((1, 8))
    onehot[0, 3] = -2.0  # absolute mass: the sign does not matter
    assert concentration(onehot)[0] == pytest.approx(1.0)
    assert concentration(np.ones((1, 8)))[0] == pytest.approx(0.0)  # uniform: the minimum
    # Two of four regions equally: 1 - log 2 / log 4 = 0.5.
    assert concentration(np.array([[1.0, -1.0, 0.0, 0.0]]))[0] == pytest.approx(0.5)
    assert concentration(np.ones((1, 8)), method="topk", k=3)[0] == pytest.approx(3 / 8)
    assert concentration(onehot, method="topk")[0] == pytest.approx(1.0)
    assert math.isnan(concentration(np.zeros((1, 4)))[0])  # no attribution at all: undefined
    assert concentration(np.array([[5.0]]))[0] == 1.0  # K = 1
    rng = np.random.default_rng(0)
    c = concentration(rng.normal(size=(100, 16)))
    assert ((c > 0) & (c < 1)).all()
    with pytest.raises(ValueError, match="method"):
        concentration(onehot, method="gini")  # type: ignore[arg-type]


def test_persistence_and_progress_curve() -> None:
    s = np.eye(4)[[0, 0, 1, 1, 1]]
    assert persistence(s) == pytest.approx(3 / 4)
    assert math.isnan(persistence(s[:1]))
    # Two chains, two bins: chain a contributes 1 to each bin, chain b 0 (averaged within bins).
    cv = progress_curve([np.array([1.0, 1.0]), np.array([0.0, 0.0, 0.0, 0.0])], n_bins=2)
    assert cv["progress"] == [0.25, 0.75]
    assert cv["mean"] == pytest.approx([0.5, 0.5])
    assert cv["sem"] == pytest.approx([0.5, 0.5])  # sd(1, 0) = 0.7071; / sqrt(2)
    assert cv["n"] == [2.0, 2.0]
    one = progress_curve([np.array([0.2, 0.4, 0.6])], n_bins=3)
    assert one["mean"] == pytest.approx([0.2, 0.4, 0.6]) and one["sem"] == [0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------- statistics
def test_roc_auc_hand_values_and_sklearn() -> None:
    assert roc_auc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert roc_auc([1, 2, 3, 4], [1, 1, 0, 0]) == 0.0
    assert roc_auc([1, 3, 2, 4], [0, 1, 0, 1]) == 1.0
    assert roc_auc([1, 2, 3, 4], [0, 1, 0, 1]) == 0.75
    assert roc_auc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5  # ties count one half
    assert math.isnan(roc_auc([1, 2], [1, 1]))
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=200), 1)  # with ties
    y = rng.random(200) < 0.4
    assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s))
    # by hand: positives {2}, negatives {1, 2} once the NaN score is dropped: (1 + 1/2) / 2 pairs
    assert roc_auc([1.0, 2.0, 2.0, float("nan")], [False, True, False, True]) == 0.75
    # positives {0.35, 0.8} vs negatives {0.1, 0.4}: 3 of 4 pairs ordered right
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75


def test_vectorised_bootstrap_auc_matches_roc_auc() -> None:
    from metrics.trajectory import _auc_two_sample

    rng = np.random.default_rng(3)
    pos, neg = np.round(rng.normal(0.5, size=(7, 30)), 1), np.round(rng.normal(size=(7, 20)), 1)
    many = _auc_two_sample(pos, neg, axis=-1)
    one_by_one = [
        roc_auc(np.r_[p, n], np.r_[np.ones(30, bool), np.zeros(20, bool)]) for p, n in zip(pos, neg, strict=True)
    ]
    np.testing.assert_allclose(many, one_by_one)


def test_compare_outcomes_and_bonferroni() -> None:
    rng = np.random.default_rng(0)
    same = compare_outcomes(rng.normal(size=300), rng.normal(size=300))
    assert same["p_value"] > 0.05  # identical distributions: no evidence of a difference
    assert 0.4 < same["auc"] < 0.6
    shifted = compare_outcomes(rng.normal(size=300), rng.normal(1.0, size=300))
    assert shifted["p_value"] < 1e-10 and shifted["auc"] > 0.7
    hand = compare_outcomes([1.0, 2.0, 3.0, np.nan], [10.0, 20.0])
    assert hand["success_median"] == 2.0 and hand["failure_median"] == 15.0
    assert hand["n_success"] == 3 and hand["u_statistic"] == 0.0 and hand["auc"] == 1.0
    empty = compare_outcomes([], [1.0])
    assert math.isnan(empty["p_value"]) and math.isnan(empty["success_median"])
    assert bonferroni([0.01, 0.02, 0.5]) == pytest.approx([0.03, 0.06, 1.0])
    b = bonferroni([0.01, float("nan")])  # a test that could not run neither counts nor changes
    assert b[0] == pytest.approx(0.01) and math.isnan(b[1])


def test_holm_and_bonferroni_hand_values() -> None:
    # Bonferroni: m p. Holm: sorted ascending, the i-th (from 0) times (m - i), made monotone:
    # 3 * 0.01 = 0.03, 2 * 0.02 = 0.04, 1 * 0.03 = 0.03 -> 0.04.
    assert bonferroni([0.01, 0.02, 0.03]) == pytest.approx([0.03, 0.06, 0.09])
    assert holm([0.01, 0.02, 0.03]) == pytest.approx([0.03, 0.04, 0.04])
    # the order of the input is kept
    assert holm([0.03, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    # capped at 1; Holm never exceeds Bonferroni
    assert holm([0.01, 0.5, 0.9]) == pytest.approx([0.03, 1.0, 1.0])
    p = np.random.default_rng(0).random(12) ** 3
    assert np.all(np.array(holm(p)) <= np.array(bonferroni(p)) + 1e-15)
    assert np.all(np.array(holm(p)) >= p)
    # NaN neither counts nor changes: m = 2 here
    h = holm([0.01, float("nan"), 0.04])
    assert h[0] == pytest.approx(0.02) and math.isnan(h[1]) and h[2] == pytest.approx(0.04)
    assert holm([]) == [] and all(math.isnan(x) for x in holm([float("nan")]))


def test_auc_by_progress_random_labels_contain_half() -> None:
    rng = np.random.default_rng(1)
    chains = [effect_vectors(_wandering(rng, int(rng.integers(5, 12)))) for _ in range(120)]
    labels = rng.random(120) < 0.5
    res = auc_by_progress(chains, labels, fractions=(0.3, 1.0), n_boot=300, seed=0)
    assert set(res) == {0.3, 1.0}
    for r in res.values():
        assert r["ci_low"] < 0.5 < r["ci_high"]
        assert r["n_success"] + r["n_failure"] == 120


def test_auc_by_progress_planted_wandering_failures() -> None:
    rng = np.random.default_rng(2)
    succ = [effect_vectors(_directed(rng, int(rng.integers(6, 14)))) for _ in range(60)]
    fail = [effect_vectors(_wandering(rng, int(rng.integers(6, 14)))) for _ in range(60)]
    res = auc_by_progress(succ + fail, [False] * 60 + [True] * 60, n_boot=200, seed=0)
    assert sorted(res) == pytest.approx([0.1 * i for i in range(1, 11)])
    assert res == auc_by_progress(succ + fail, [False] * 60 + [True] * 60, n_boot=200, seed=0)  # seeded
    assert res[1.0]["auc"] > 0.8 and res[1.0]["ci_low"] > 0.7
    assert res[0.5]["auc"] > 0.8
    # At 10 % every prefix has 2 spans: tortuosity is 1 for all, so there is no information yet.
    assert res[0.1]["auc"] == 0.5 and res[0.1]["mean_prefix_spans"] == 2.0
    assert res[0.1]["ci_low"] == res[0.1]["ci_high"] == 0.5
    # One failure: it stays in every stratified resample; only the successes vary.
    one = auc_by_progress([*succ[:20], fail[0]], [False] * 20 + [True], fractions=(1.0,), n_boot=200)
    assert one[1.0]["n_failure"] == 1 and one[1.0]["ci_low"] <= one[1.0]["auc"] <= one[1.0]["ci_high"]
    with pytest.raises(ValueError, match="labels"):
        auc_by_progress(succ, [True])


def test_mann_whitney_power_hand_values_and_null() -> None:
    # Normal approximation by hand: n_s = 588, n_f = 212, AUC 0.6, two-sided alpha 1e-3.
    ns, nf, a = 588, 212, 0.6
    se0 = math.sqrt((ns + nf + 1) / (12 * ns * nf))
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se1 = math.sqrt((a * (1 - a) + (nf - 1) * (q1 - a * a) + (ns - 1) * (q2 - a * a)) / (ns * nf))
    z = 3.2905267314919255  # norm.isf(5e-4)
    expected = 0.5 * math.erfc((z * se0 - 0.1) / se1 / math.sqrt(2))
    pw = mann_whitney_power(ns, nf, a, alpha=1e-3, n_sim=1000, seed=1)
    assert pw["power_normal"] == pytest.approx(expected, rel=1e-9)
    assert abs(pw["power_simulated"] - pw["power_normal"]) < 4 * pw["power_simulated_se"] + 0.01
    # the detectable AUC has exactly the target power, and power grows with AUC and with n
    at = mann_whitney_power(ns, nf, pw["detectable_auc"], n_sim=10)
    assert at["power_normal"] == pytest.approx(0.8, abs=1e-6)
    assert mann_whitney_power(ns, nf, 0.65, n_sim=10)["power_normal"] > pw["power_normal"]
    assert mann_whitney_power(60, 20, 0.6, n_sim=400)["power_simulated"] < 0.1  # a small sample must score low
    # near the null, a two-sided test at alpha detects "failures higher" about alpha / 2 of the time
    null = mann_whitney_power(100, 100, 0.5 + 1e-9, alpha=0.1, n_sim=4000, seed=2)
    assert null["power_simulated"] == pytest.approx(0.05, abs=0.015)
    with pytest.raises(ValueError, match="auc"):
        mann_whitney_power(10, 10, 0.5)
    with pytest.raises(ValueError, match="both groups"):
        mann_whitney_power(10, 0, 0.6)


def test_length_adjusted_separates_length_from_the_metric() -> None:
    rng = np.random.default_rng(0)
    n = rng.integers(3, 26, 1200)
    # failures are the short chains; the metric only grows with length: unadjusted it looks protective,
    # adjusted it carries nothing
    failed = rng.random(1200) < np.where(n < 10, 0.6, 0.1)
    metric = np.exp(np.log(n) + rng.normal(0, 0.3, 1200))
    r = length_adjusted(metric, n, failed)
    assert r["n"] == 1200 and r["p_value_unadjusted"] < 1e-6 and r["coef_metric_unadjusted"] < 0
    assert r["p_value"] > 0.01 and r["p_value_length"] < 1e-6 and r["coef_length"] < 0
    # a metric that truly rises with failure at every length is found
    metric2 = np.exp(np.log(n) + 0.8 * failed + rng.normal(0, 0.3, 1200))
    r2 = length_adjusted(metric2, n, failed)
    assert r2["coef_metric"] > 0 and r2["p_value"] < 1e-10
    # degenerate input: NaN, not a crash
    assert math.isnan(length_adjusted([1.0, 2.0, 3.0, 4.0], [3, 4, 5, 6], [False] * 4)["coef_metric"])
    with pytest.raises(ValueError, match="differ in length"):
        length_adjusted([1.0, 2.0], [3], [True, False])


def test_three_outcome_fixation_vs_wandering() -> None:
    rng = np.random.default_rng(3)
    chains = [_directed(rng, 8, noise=0.02) for _ in range(25)]
    chains += [_wandering(rng, 8) for _ in range(25)]
    chains += [_fixated(rng, 8) for _ in range(25)]
    outcomes = ["success"] * 25 + ["reasoning_error"] * 25 + ["hallucination"] * 25
    res = three_outcome(chains, outcomes, top=K)
    by = res["by_outcome"]
    assert by["hallucination"]["n"] == 25
    assert by["hallucination"]["concentration"]["mean"] > by["reasoning_error"]["concentration"]["mean"] + 0.3
    assert by["hallucination"]["persistence"]["mean"] == pytest.approx(1.0)
    assert by["hallucination"]["step_size"]["median"] < by["reasoning_error"]["step_size"]["median"]
    t = res["tests"]["hallucination_vs_reasoning_error"]["concentration"]
    assert t["p_value_bonferroni"] < 1e-6 and t["p_value_bonferroni"] >= t["p_value"]
    assert t["p_value"] <= t["p_value_holm"] <= t["p_value_bonferroni"]
    # A label outside the three is ignored, not counted.
    res2 = three_outcome(chains[:2], ["success", "failure"])
    assert res2["by_outcome"]["success"]["n"] == 1 and res2["by_outcome"]["reasoning_error"]["n"] == 0


# ---------------------------------------------------------------------------- PCA
def test_pca_round_trip_and_shapes(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    chains = [effect_vectors(_wandering(rng, 6)) for _ in range(20)]
    pca = TrajectoryPCA(3).fit(chains)
    assert pca.components_.shape == (3, K)
    np.testing.assert_allclose(pca.components_ @ pca.components_.T, np.eye(3), atol=1e-10)
    assert 0 < pca.explained_variance_ratio_.sum() <= 1 + 1e-12
    assert np.all(np.diff(pca.explained_variance_ratio_) <= 1e-12)
    pca.save(tmp_path / "pca.json")
    back = TrajectoryPCA.load(tmp_path / "pca.json")
    np.testing.assert_allclose(back.transform(chains[0]), pca.transform(chains[0]))
    assert pca.transform(chains[0]).shape == (6, 3)
    with pytest.raises(ValueError, match="D ="):
        pca.transform(np.zeros((2, K + 1)))
    with pytest.raises(ValueError, match="not fitted"):
        TrajectoryPCA().transform(chains[0])
    # Rank-deficient data (all points on one line): the missing components are zero.
    flat = TrajectoryPCA(3).fit([np.outer(np.arange(5.0), np.ones(4))])
    np.testing.assert_allclose(flat.components_[1:], 0.0)
    assert flat.explained_variance_ratio_[0] == pytest.approx(1.0)
    # One point, or identical points: no direction at all.
    for pts in (np.ones((1, 4)), np.ones((3, 4))):
        none = TrajectoryPCA(2).fit([pts])
        assert not none.components_.any() and not none.explained_variance_ratio_.any()


def test_pca_recovers_known_components() -> None:
    # Four points on two axes of a turned plane in 3-D, shifted: variance 18/3 = 6 along
    # u = (0.8, 0.6, 0), 2/3 along v = (-0.6, 0.8, 0) and none along z.
    u, v = np.array([0.8, 0.6, 0.0]), np.array([-0.6, 0.8, 0.0])
    shift = np.array([1.0, 2.0, 3.0])
    pts = np.array([3 * u, -3 * u, -v, v]) + shift
    pca = TrajectoryPCA(3).fit([pts[:2], pts[2:]])
    np.testing.assert_allclose(pca.mean_, shift, atol=1e-12)
    # signs: largest absolute loading positive (v's is 0.8); the missing third direction is zero
    np.testing.assert_allclose(pca.components_, [u, v, np.zeros(3)], atol=1e-12)
    np.testing.assert_allclose(pca.explained_variance_, [6.0, 2 / 3, 0.0], atol=1e-12)
    np.testing.assert_allclose(pca.explained_variance_ratio_, [0.9, 0.1, 0.0], atol=1e-12)
    np.testing.assert_allclose(pca.transform(pts), [[3, 0, 0], [-3, 0, 0], [0, -1, 0], [0, 1, 0]], atol=1e-12)
    # the sign rule makes the fit independent of the direction the data happen to be listed in
    np.testing.assert_allclose(TrajectoryPCA(3).fit([-pts + 2 * shift]).components_, pca.components_, atol=1e-12)
    # the state is plain JSON (no pickle) and round-trips
    d = json.loads(json.dumps(pca.to_dict()))
    assert set(d) == {"n_components", "mean", "components", "explained_variance", "explained_variance_ratio"}
    back = TrajectoryPCA.from_dict(d)
    np.testing.assert_allclose(back.components_, pca.components_)
    np.testing.assert_allclose(back.explained_variance_, pca.explained_variance_)
    np.testing.assert_allclose(back.transform(pts), pca.transform(pts))
    # a state saved before explained_variance was stored still loads
    d.pop("explained_variance")
    old = TrajectoryPCA.from_dict(d)
    np.testing.assert_allclose(old.transform(pts), pca.transform(pts))
    assert np.isnan(old.explained_variance_).all() and old.explained_variance_ratio_[0] == pytest.approx(0.9)


# ---------------------------------------------------------------------------- flagger
def test_flagger_calibration_and_online_use() -> None:
    rng = np.random.default_rng(5)
    ref = [_directed(rng, int(rng.integers(4, 12)), noise=0.1) for _ in range(400)]
    fresh = [_directed(rng, int(rng.integers(4, 12)), noise=0.1) for _ in range(400)]
    fail = [_wandering(rng, int(rng.integers(4, 12))) for _ in range(100)]
    fl = TortuosityFlagger(fpr=0.1, min_spans=3, top=K).fit(ref)
    fpr_ref = np.mean([fl.run(c) is not None for c in ref])
    fpr_fresh = np.mean([fl.run(c) is not None for c in fresh])
    assert fpr_ref == pytest.approx(0.1, abs=0.01)  # calibrated per chain
    assert fpr_fresh == pytest.approx(0.1, abs=0.05)  # and it holds on new chains of the same kind
    assert np.mean([fl.run(c) is not None for c in fail]) > 0.5
    # Online: one span at a time; the flag stays raised; flagged_at is the raising span.
    c = fail[int(np.argmax([fl.run(c) is not None for c in fail]))]
    fl.reset()
    states = [fl.update(row) for row in c]
    assert states[:2] == [False, False]  # never before min_spans
    assert fl.flagged_at is not None and states[fl.flagged_at] and not any(states[: fl.flagged_at])
    assert all(states[fl.flagged_at :])
    first = fl.flagged_at
    assert fl.run(c) == first and fl.flagged_at == first
    # Two spans or fewer can never be flagged.
    assert fl.run(c[:2]) is None
    # JSON round trip.
    back = TortuosityFlagger.from_dict(json.loads(json.dumps(fl.to_dict())))
    assert back.threshold_ == fl.threshold_ and [back.run(x) for x in fail[:20]] == [fl.run(x) for x in fail[:20]]


def test_stillness_flagger_catches_fixation() -> None:
    rng = np.random.default_rng(6)
    ref = [_directed(rng, int(rng.integers(4, 12)), noise=0.1) for _ in range(400)]
    fresh = [_directed(rng, int(rng.integers(4, 12)), noise=0.1) for _ in range(400)]
    fixated = [_fixated(rng, int(rng.integers(4, 12))) for _ in range(100)]
    still = TortuosityFlagger(fpr=0.1, min_spans=3, top=K, statistic="stillness").fit(ref)
    wander = TortuosityFlagger(fpr=0.1, min_spans=3, top=K).fit(ref)
    assert np.mean([still.run(c) is not None for c in ref]) == pytest.approx(0.1, abs=0.01)
    assert np.mean([still.run(c) is not None for c in fresh]) == pytest.approx(0.1, abs=0.05)
    assert np.mean([still.run(c) is not None for c in fixated]) > 0.9  # barely moving: caught
    # the online value is the prefix mean step, equal to the whole-chain function at every prefix
    c = fresh[0]
    still.reset()
    online = []
    for row in c:
        still.update(row)
        online.append(still.current_value)
    assert np.allclose(online[2:], still.prefix_values(c)) and np.isnan(online[0])
    e = effect_vectors(c, K)
    assert online[-1] == pytest.approx(path_length(e) / (len(c) - 1))
    # hand value: unit steps along one axis, then none: mean step after 3 spans = (1 + 0) / 2
    hand = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert TortuosityFlagger(top=2, statistic="stillness").prefix_values(hand)[0] == pytest.approx(math.sqrt(2) / 2)
    # saved and loaded with its statistic; files saved before the option load as tortuosity
    back = TortuosityFlagger.from_dict(json.loads(json.dumps(still.to_dict())))
    assert back.statistic == "stillness" and [back.run(x) for x in fixated[:20]] == [still.run(x) for x in fixated[:20]]
    old = {k: v for k, v in wander.to_dict().items() if k != "statistic"}
    assert TortuosityFlagger.from_dict(old).statistic == "tortuosity"
    assert "barely moves" in still.rule() and "wanders" in wander.rule()
    with pytest.raises(ValueError, match="statistic must be one of"):
        TortuosityFlagger(statistic="speed")


def test_flagger_bad_input() -> None:
    with pytest.raises(ValueError, match="calibrated"):
        TortuosityFlagger().update(np.ones(4))
    with pytest.raises(ValueError, match="fpr"):
        TortuosityFlagger(fpr=0.0)
    with pytest.raises(ValueError, match="min_spans"):
        TortuosityFlagger(min_spans=2)
    with pytest.raises(ValueError, match="no reference chain"):
        TortuosityFlagger().fit([np.ones((2, 4))])
    fl = TortuosityFlagger(fpr=0.5).fit([np.eye(4), np.eye(4)[::-1]])
    fl.update(np.ones(4))
    with pytest.raises(ValueError, match="K ="):
        fl.update(np.ones(5))


# ---------------------------------------------------------------------------- hallucination labels
def _scene() -> Scene:
    objs = [
        ShapeObject(shape="circle", colour="red", size="large", box=(10, 10, 60, 60)),
        ShapeObject(shape="square", colour="blue", size="small", box=(120, 120, 140, 140)),
    ]
    return Scene(width=224, height=224, objects=objs)


@pytest.mark.parametrize(
    ("text", "absent"),
    [
        ("<think> There is a large red circle at the top left.</think> The answer is 1.", False),
        ("<think> There is a small blue square at the center.</think> The answer is 1.", False),
        ("<think> There is a small red circle at the top left.</think> The answer is 1.", True),  # wrong size
        ("<think> There is a large green circle at the top left.</think> The answer is 1.", True),  # wrong colour
        ("<think> The leftmost one is the small yellow triangle.</think> The answer is yellow.", True),
        ("<think> I need to find a green triangle. There is no green triangle.</think> The answer is no.", False),
        (
            "<think> I need to count the triangles. I see no triangles. So the count is 0.</think> The answer is 0.",
            False,
        ),
        ("<think> The count of red circles is 1.</think> The answer is 1.", False),  # plural: a group, not an object
        ("<think> There is a large red circle at the top left.</think> The answer is triangle.", False),  # answer line
        ("<think> There is a large red circle at the top left. There is a small purple", False),  # unfinished
        ("<think> There is a large red circle at the top. There is a large purple triangle", True),  # truncated
        ("There is a square.", False),  # no tags, shape only: a square is there
    ],
)
def test_names_absent_object(text: str, absent: bool) -> None:
    assert names_absent_object(text, _scene()) is absent


def test_object_mentions_and_scene_rebuild() -> None:
    m = object_mentions("<think> There is a large red circle at the top. The one is the blue square.</think>")
    assert [(x["size"], x["colour"], x["shape"]) for x in m] == [("large", "red", "circle"), (None, "blue", "square")]
    ex = make_example("test", 3)
    scene = scene_for("test-3", ex.question.text, dataset="shapes:test")
    assert scene is not None and [o.describe() for o in scene.objects] == [o.describe() for o in ex.scene.objects]
    assert not names_absent_object(ex.target_text(), scene)  # the ground-truth trace names only present objects
    assert scene_for("test-3", "another question?") is None  # a different benchmark made it: refuse
    assert scene_for("17") is None and scene_for("test-3", dataset="my.jsonl") is None


# ---------------------------------------------------------------------------- analysis on a collection
def _absent_description(scene: Scene) -> str:
    present = {o.describe() for o in scene.objects}
    for size, colour, shape in itertools.product(SIZES, COLOURS, SHAPES):
        if f"{size} {colour} {shape}" not in present:
            return f"{size} {colour} {shape}"
    raise AssertionError("scene holds every object")


def _write_collection(root: Path, n: int = 36, k: int = K) -> Path:
    """A collection in the real shard format: thirds of success, reasoning error and hallucination."""
    from attrib.collect.store import write_shard

    rng = np.random.default_rng(7)
    recs, loo, offsets, regions = [], [], [0], {}
    for i in range(n):
        ex = make_example("test", i)
        kind = ("success", "reasoning_error", "hallucination")[i % 3]
        n_spans = int(rng.integers(4, 10))
        if kind == "success":
            out, correct, s = ex.target_text(), True, _directed(rng, n_spans, k, noise=0.02)
        elif kind == "reasoning_error":
            out, correct, s = ex.target_text(), False, _wandering(rng, n_spans, k)
        else:
            out = f"<think> There is a {_absent_description(ex.scene)} at the top.</think> The answer is 0."
            correct, s = False, _fixated(rng, n_spans, k)
        recs.append(
            {
                "uid": ex.uid,
                "question": ex.question.text,
                "answer": ex.answer,
                "output": out,
                "predicted": None,
                "correct": correct,
                "spans": [{"text": f"s{j}.", "start": j, "end": j + 1} for j in range(n_spans)],
            }
        )
        loo.append(s)
        offsets.append(offsets[-1] + n_spans)
        regions[f"regions_{i}"] = np.zeros((4, 4), np.int16)
    scores = np.concatenate(loo).astype(np.float32)
    arrays = {
        "features": scores[:, :, None, None].copy(),  # L = H = 1: features equal the scores
        "span_offsets": np.asarray(offsets, np.int64),
        "subsets": np.zeros((n, 4, k), np.uint8),
        "subset_deltas": np.zeros((len(scores), 4), np.float32),
        "loo_deltas": scores,
        **regions,
    }
    root.mkdir(parents=True, exist_ok=True)
    write_shard(root, "shard-00000", arrays, recs)
    manifest = {
        "shards": [{"name": "shard-00000", "n_examples": n, "n_failed": 0}],
        "config": {"dataset": "shapes:test", "region_method": "color", "k": k},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def collection_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_collection(tmp_path_factory.mktemp("traj") / "coll")


def test_analyse_on_collection(collection_dir: Path) -> None:
    from attrib.collect import Collection
    from estimators.linear import LinearHeadEstimator

    coll = Collection.open(collection_dir)
    res = analyse(coll, n_boot=100)
    json.dumps(res, allow_nan=False)  # strict JSON: NaN became null
    for key in ("path_length", "tortuosity"):
        assert set(res[key]) >= {"success_median", "failure_median", "p_value", "p_value_bonferroni"}
    assert res["n_success"] == 12 and res["n_failure"] == 24
    assert res["n_hallucination"] == 12 and res["n_reasoning_error"] == 12 and res["n_failure_untyped"] == 0
    assert res["tortuosity"]["failure_median"] > res["tortuosity"]["success_median"]
    assert res["tortuosity"]["p_value_bonferroni"] < 0.01
    assert res["tortuosity"]["p_value_bonferroni"] == pytest.approx(min(1.0, 3 * res["tortuosity"]["p_value"]))
    comps = [res["path_length"], res["tortuosity"], res["concentration"]["comparison"]]
    ps, holm_ps = [c["p_value"] for c in comps], [c["p_value_holm"] for c in comps]
    assert holm_ps == pytest.approx(holm(ps))
    assert res["tortuosity"]["p_value"] <= res["tortuosity"]["p_value_holm"] <= res["tortuosity"]["p_value_bonferroni"]
    assert set(res["auc_by_progress"]) == {"0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1"}
    a = res["auc_by_progress"]["1"]
    assert set(a) >= {"auc", "ci_low", "ci_high"} and a["ci_low"] <= a["auc"] <= a["ci_high"]
    conc = res["concentration"]
    assert len(conc["progress"]) == 10 and set(conc["by_outcome"]) >= {"success", "hallucination", "reasoning_error"}
    assert set(conc["by_outcome"]["success"]) == {"mean", "sem", "n"}
    by = res["three_outcome"]["by_outcome"]
    assert by["hallucination"]["concentration"]["mean"] > by["reasoning_error"]["concentration"]["mean"]
    fl = res["flagger"]
    assert fl["fpr_target"] == 0.1 and fl["threshold"] >= 1.0
    assert 0 <= fl["flagged_rate_failure"] <= 1 and fl["n_reference"] == 12
    assert TortuosityFlagger.from_dict(fl["state"]).threshold_ == fl["threshold"]
    assert len(res["chains"]) == 36 and res["pca"]["n_components"] == 3
    assert set(res["flaggers"]) == {"tortuosity", "stillness"} and res["flagger"] == res["flaggers"]["tortuosity"]
    assert res["flaggers"]["stillness"]["state"]["statistic"] == "stillness"
    pw = res["power"]["failure"]
    assert pw["n_success"] == 12 and pw["n_failure"] == 24 and pw["auc"] == 0.6 and pw["alpha"] == 1e-3
    assert pw["power_simulated"] < 0.1  # 36 chains cannot find AUC 0.6 at p < 1e-3
    assert set(res["power"]) == {"failure", "reasoning_error", "hallucination"}
    adj = res["length_adjusted"]["tortuosity"]["failure"]
    assert adj["n"] == 36 and adj["n_failure"] == 24
    # An estimator with w = 1 on L = H = 1 features reproduces the leave-one-out scores.
    est = LinearHeadEstimator()
    est.coef_, est.intercept_ = np.ones((1, 1)), 0.0
    res_est = analyse(coll, est, n_boot=100)
    assert res_est["tortuosity"] == pytest.approx(res["tortuosity"])


def test_analyse_edge_cases() -> None:
    # No failures, unknown outcomes, one-span chains: no crash, NaN statistics become null.
    rng = np.random.default_rng(8)
    chains = [Chain(f"x{i}", _directed(rng, 5), "success") for i in range(4)]
    chains += [Chain("u", _directed(rng, 5), "unknown"), Chain("one", rng.normal(size=(1, K)), "success")]
    res = analyse_chains(chains, n_boot=10)
    assert res["n_unknown"] == 1 and res["n_success"] == 5 and res["n_failure"] == 0
    assert res["tortuosity"]["p_value"] is None and res["auc_by_progress"]["0.5"]["auc"] is None
    assert res["flagger"]["flagged_rate_failure"] is None
    assert "error" in analyse_chains(chains[:1], n_boot=10)["flagger"]


def test_load_chains_needs_scores() -> None:
    class Fake:
        def examples(self):  # type: ignore[no-untyped-def]
            yield {"uid": "a", "correct": True, "features": np.zeros((2, 3, 1, 1))}

    with pytest.raises(ValueError, match="leave-one-out"):
        load_chains(Fake())


def test_cli_and_plots(collection_dir: Path, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    out_json, plots = tmp_path / "t.json", tmp_path / "plots"
    args = parser.parse_args(
        [
            "trajectories",
            "--data",
            str(collection_dir),
            "--json",
            str(out_json),
            "--plots",
            str(plots),
            "--n-boot",
            "50",
        ]
    )
    assert args.fn is run and args.fpr == 0.1 and args.estimator is None
    assert run(args) == 0
    res = json.loads(out_json.read_text())
    assert res["n_chains"] == 36 and res["scores"] == "leave-one-out drops"
    names = {p.name for p in plots.iterdir()}
    assert names >= {
        "trajectories_3d.png",
        "trajectories_3d.html",
        "metrics_by_outcome.png",
        "auc_by_progress.png",
        "concentration.png",
    }
    page = (plots / "trajectories_3d.html").read_text()
    # Self-contained: no external script or stylesheet (plotly.js, when used, is inlined).
    assert not re.search(r"<(script|link)[^>]+(src|href)=[\"']?https?:", page) and "test-0" in page


def test_html_escapes_user_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    evil = '</script><img src=x onerror="alert(1)">'
    # The plotly page escapes the text too.
    pp = trajectories_html([(evil, "success", np.zeros((3, 3)))], tmp_path / "p.html", title=evil).read_text()
    assert evil not in pp and "<img src=x" not in pp and 'onerror="alert' not in pp
    # The built-in canvas page (used without plotly).
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    p = trajectories_html([(evil, "success", np.zeros((3, 3)))], tmp_path / "x.html", title=evil)
    page = p.read_text()
    assert evil not in page and "<img" not in page
    assert page.count("</script>") == 2  # only the page's own two script elements close
    data = page.split('type="application/json">')[1].split("</script>")[0]
    assert json.loads(data)["chains"][0]["uid"] == evil  # the text survives as data


def test_write_plots_without_failures(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    chains = [Chain(f"s{i}", _directed(rng, 5), "success") for i in range(5)]
    res = analyse_chains(chains, n_boot=10)
    files = write_plots(res, chains, tmp_path)
    assert all(p.is_file() and p.stat().st_size > 0 for p in files.values())


def test_attrib_cli_saves_a_flagger_usable_online(collection_dir: Path, tmp_path: Path) -> None:
    from attrib.cli import main
    from metrics.trajectory import TortuosityFlagger

    fl_path = tmp_path / "flagger.json"
    args = ["trajectories", "--data", str(collection_dir), "--n-boot", "20", "--save-flagger", str(fl_path)]
    assert main(args) == 0
    fl = TortuosityFlagger.from_dict(json.loads(fl_path.read_text()))
    assert np.isfinite(fl.threshold_) and fl.threshold_ >= 1.0
    # Online use span by span gives the same answer as running the whole chain.
    rng = np.random.default_rng(3)
    chain = rng.normal(size=(8, 32))
    online = [fl.update(v) for v in chain]
    fl2 = TortuosityFlagger.from_dict(json.loads(fl_path.read_text()))
    at = fl2.run(chain)
    assert (at is None and not any(online)) or (at is not None and online.index(True) == at)


def test_new_trajectory_options_refuse_bad_input_before_work(collection_dir: Path, tmp_path: Path) -> None:
    from attrib.cli import main

    base = ["trajectories", "--data", str(collection_dir), "--json", str(tmp_path / "t.json")]
    assert main([*base, "--power-auc", "0.4"]) == 2
    assert main([*base, "--power-alpha", "0"]) == 2
    (tmp_path / "bad.json").write_text('{"not": "a flagger"}')
    assert main([*base, "--check-flagger", str(tmp_path / "bad.json")]) == 2
    assert not (tmp_path / "t.json").exists()  # refused before any output was written
    with pytest.raises(ValueError, match="flag_statistic must be one of"):
        analyse_chains([], flag_statistic="speed")


def test_check_flagger_applies_a_saved_flagger_unchanged(collection_dir: Path, tmp_path: Path) -> None:
    from attrib.analysis.trajectories import check_flagger
    from attrib.collect import Collection

    chains = load_chains(Collection.open(collection_dir))
    fl = TortuosityFlagger(fpr=0.1, statistic="stillness").fit([c.scores for c in chains if c.outcome == "success"])
    ck = check_flagger(chains, fl)
    succ = [c for c in chains if c.outcome == "success" and c.n_spans >= 3]
    assert ck["n_success"] == len(succ) and ck["statistic"] == "stillness" and ck["threshold"] == fl.threshold_
    assert ck["fpr"] == pytest.approx(np.mean([fl.run(c.scores) is not None for c in succ]))
    assert ck["n_failure"] == ck["n_reasoning_error"] + ck["n_hallucination"] == 24
