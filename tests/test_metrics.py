"""Faithfulness metrics against hand-computed values and cases that must score low."""

from __future__ import annotations

import numpy as np
import pytest

from metrics import bootstrap_ci, mean_ci, paired_difference
from metrics.faithfulness import lds, pointing_accuracy, r2, topk_drop, topk_sets


def _lds_data(n: int = 200, m: int = 32, k: int = 16, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, k))
    subsets = rng.random((n, m, k)) < 0.5
    actual = np.einsum("nmk,nk->nm", subsets, scores) + 0.01 * rng.normal(size=(n, m))
    return scores, subsets, actual


def test_lds_perfect_random_inverted() -> None:
    scores, subsets, actual = _lds_data()
    perfect = np.einsum("nmk,nk->nm", subsets, scores)
    assert lds(actual, perfect).value > 0.99
    assert lds(actual, -perfect).value < -0.99
    rng = np.random.default_rng(1)
    rand = lds(actual, rng.normal(size=actual.shape))
    assert rand.ci_low < 0 < rand.ci_high and abs(rand.value) < 0.1


def test_lds_hand_value_and_skips() -> None:
    actual = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0], [4.0, 3.0, 2.0, 1.0]])
    pred = np.array([[1.0, 3.0, 2.0, 4.0], [0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]])
    res = lds(actual, pred)
    # Row 0: ranks (1,2,3,4) vs (1,3,2,4): rho = 1 - 6*2/(4*15) = 0.8; row 1 constant: skipped; row 2: -1.
    assert res.value == pytest.approx((0.8 - 1.0) / 2)
    assert res.n == 2 and res.n_skipped == 1


def test_lds_bad_input() -> None:
    a = np.zeros((3, 4))
    a[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN/inf in rows \[1\]"):
        lds(a, np.zeros((3, 4)))
    with pytest.raises(ValueError, match="differ in shape"):
        lds(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="empty"):
        lds(np.zeros((0, 4)), np.zeros((0, 4)))


def test_topk_oracle_beats_random() -> None:
    rng = np.random.default_rng(0)
    loo = rng.exponential(size=(100, 20))
    oracle = topk_sets(loo, 5)
    rand = topk_sets(rng.normal(size=(100, 20)), 5)
    # With additive effects, the drop of a set is the sum of its members' LOO drops.
    d_oracle = (loo * oracle).sum(1)
    d_rand = (loo * rand).sum(1)
    res = topk_drop(d_rand, d_oracle)
    assert res["raw"].value < topk_drop(d_oracle)["raw"].value
    assert res["normalized"].value < 0.8
    assert topk_drop(d_oracle, d_oracle)["normalized"].value == pytest.approx(1.0)
    assert topk_sets(np.array([[0.1, 0.5, 0.3, 0.5]]), 2).tolist() == [[False, True, False, True]]
    # an oracle whose removal does not hurt (untrained model): raw kept, normalised undefined (NaN)
    flat = topk_drop(np.array([0.2, -0.1]), np.array([-0.05, 0.01]))
    assert flat["raw"].value == pytest.approx(0.05)
    assert np.isnan(flat["normalized"].value) and flat["normalized"].n == 2


def test_r2_hand_values() -> None:
    loo = np.array([[1.0, 2.0, 3.0], [0.0, 1.0, 5.0]])
    assert r2(2 * loo + 1, loo).value == pytest.approx(1.0)
    assert r2(np.ones_like(loo), loo).value == 0.0
    assert r2(-2 * loo + 1, loo).value == 0.0  # backwards scores explain nothing
    s = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    expected = np.corrcoef(s.ravel(), loo.ravel())[0, 1] ** 2
    assert r2(s, loo).value == pytest.approx(expected)
    rng = np.random.default_rng(0)
    big = rng.normal(size=(300, 16))
    assert r2(rng.normal(size=big.shape), big).value < 0.01


def test_pointing_hand_values() -> None:
    scores = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.0, 0.0, 1.0]])
    res = pointing_accuracy(scores, [[1], [2], None, [0, 2]])
    assert res.value == pytest.approx(2 / 3) and res.n == 3 and res.n_skipped == 1
    with pytest.raises(ValueError, match="score rows"):
        pointing_accuracy(scores, [[1]])


def test_bootstrap_helpers() -> None:
    lo, hi = bootstrap_ci([1.0, 1.0, 1.0])
    assert lo == hi == 1.0
    r = mean_ci([0.0, 1.0] * 50)
    assert r["mean"] == 0.5 and r["ci_low"] < 0.5 < r["ci_high"]
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])


def test_paired_difference_hand_values_and_a_null_case() -> None:
    # 10 examples: both right on 5, only b right on 3, only a right on 1, both wrong on 1
    a = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    b = [1, 1, 1, 1, 1, 0, 1, 1, 1, 0]
    r = paired_difference(a, b)
    assert r["n"] == 10 and r["mean_a"] == pytest.approx(0.6) and r["mean_b"] == pytest.approx(0.8)
    assert r["difference"] == pytest.approx(0.2) and r["only_a"] == 1 and r["only_b"] == 3
    assert r["mcnemar_p"] == pytest.approx(0.625)  # exact binomial: 2 * P(X <= 1 | n=4, p=1/2) = 2 * 5/16
    assert r["ci_low"] <= 0.2 <= r["ci_high"]
    # a large, one-sided difference: tight interval above 0 and a small p
    big = paired_difference([0] * 60 + [1] * 40, [1] * 100)
    assert big["difference"] == pytest.approx(0.6) and big["ci_low"] > 0.45 and big["mcnemar_p"] < 1e-15
    # identical outcomes must score no difference at all
    same = paired_difference([1, 0, 1, 1], [1, 0, 1, 1])
    assert same["difference"] == 0 and same["ci_low"] == same["ci_high"] == 0 and same["mcnemar_p"] == 1.0
    with pytest.raises(ValueError, match="equal length"):
        paired_difference([1, 0], [1])
    with pytest.raises(ValueError, match="0/1"):
        paired_difference([0.5, 1], [1, 1])


# ---------------------------------------------------------------------------- scipy-backed intervals
def test_bootstrap_ci_reproduces_the_percentile_bootstrap_by_hand() -> None:
    # The percentile interval is the quantiles of the means of n-out-of-n resamples drawn with
    # rng.integers(0, n, (n_boot, n)) from default_rng(seed): exactly what the library computed before.
    x = np.random.default_rng(3).normal(size=37)
    idx = np.random.default_rng(5).integers(0, x.size, size=(800, x.size))
    by_hand = np.quantile(x[idx].mean(axis=1), [0.05, 0.95])
    assert bootstrap_ci(x, n_boot=800, level=0.9, seed=5) == pytest.approx(tuple(by_hand))
    # same seed, same numbers; another seed, other numbers
    assert bootstrap_ci(x, seed=1) == bootstrap_ci(x, seed=1) != bootstrap_ci(x, seed=2)
    # a non-vectorised statistic gives the same resamples
    assert bootstrap_ci(x, lambda v: float(np.mean(v)), n_boot=800, level=0.9, seed=5) == pytest.approx(tuple(by_hand))


def test_bootstrap_ci_methods_and_bad_input() -> None:
    x = np.random.default_rng(0).exponential(size=60)
    pct = bootstrap_ci(x)
    bca = bootstrap_ci(x, method="BCa")
    assert bca != pct and bca[0] < x.mean() < bca[1]
    # BCa corrects for the right skew of the exponential: its interval sits further right
    assert bca[1] > pct[1]
    basic = bootstrap_ci(x, method="basic")
    assert basic == pytest.approx((2 * x.mean() - pct[1], 2 * x.mean() - pct[0]))
    # constant data: every method gives the point (BCa would otherwise be undefined)
    assert bootstrap_ci([2.0, 2.0, 2.0], method="BCa") == (2.0, 2.0)
    assert bootstrap_ci([4.0]) == (4.0, 4.0)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(x, n_boot=0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(x, level=1.0)
    with pytest.raises(ValueError, match="method"):
        bootstrap_ci(x, method="studentized")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN on a bootstrap resample"):
        bootstrap_ci(x, lambda v: float("nan"))
    with pytest.raises(ValueError, match="one label per unit"):
        bootstrap_ci(x, groups=[0, 1])


def test_clustered_bootstrap_hand_values() -> None:
    # Two examples of five identical spans each: 0s and 1s. Resampling examples draws (0, 0), (0, 1),
    # (1, 1) with probabilities 1/4, 1/2, 1/4, so the pooled mean is 0, 0.5 or 1 and the 95 % percentile
    # interval is exactly [0, 1]. Resampling spans treats the ten as independent: Binomial(10, 1/2) / 10,
    # whose 2.5 % / 97.5 % quantiles are 0.2 / 0.8.
    v = np.r_[np.zeros(5), np.ones(5)]
    ex = [0] * 5 + [1] * 5
    assert bootstrap_ci(v, groups=ex) == (0.0, 1.0)
    assert bootstrap_ci(v) == pytest.approx((0.2, 0.8))
    # whole groups stay together, whatever their labels and order: two groups of sizes 2 and 3 give
    # pooled sizes 4, 5, 6 with probabilities 1/4, 1/2, 1/4
    sizes = bootstrap_ci([1.0, 1.0, 2.0, 2.0, 2.0], len, groups=["b", "b", "a", "a", "a"])
    assert sizes == (4.0, 6.0)
    # one value per group: the clustered bootstrap is the ordinary one (same draws, same numbers)
    x = np.random.default_rng(1).normal(size=40)
    assert bootstrap_ci(x, groups=np.arange(40)) == pytest.approx(bootstrap_ci(x))
    assert bootstrap_ci(x, groups=np.arange(40)[::-1], n_boot=300) != bootstrap_ci(x, n_boot=300)  # relabelled
    # one group: nothing to resample
    assert bootstrap_ci([1.0, 3.0], groups=[7, 7]) == (2.0, 2.0)
    r = mean_ci(v, groups=ex)
    assert r == {"mean": 0.5, "ci_low": 0.0, "ci_high": 1.0}


def test_clustered_interval_is_wider_when_groups_are_correlated() -> None:
    rng = np.random.default_rng(2)
    effect = rng.normal(size=30)  # per-example level shared by its spans
    v = np.repeat(effect, 8) + 0.1 * rng.normal(size=240)
    g = np.repeat(np.arange(30), 8)
    lo_s, hi_s = bootstrap_ci(v)
    lo_c, hi_c = bootstrap_ci(v, groups=g)
    assert hi_c - lo_c > 2 * (hi_s - lo_s)
    assert lo_c < v.mean() < hi_c


def test_paired_difference_intervals_contain_the_true_difference() -> None:
    from metrics.stats import paired_bootstrap_difference, two_sample_bootstrap_ci

    rng = np.random.default_rng(4)
    covered = 0
    for _ in range(40):
        a = rng.normal(size=50)
        b = a + 0.3 + 0.2 * rng.normal(size=50)  # true difference 0.3
        r = paired_bootstrap_difference(a, b, n_boot=500)
        covered += r["ci_low"] <= 0.3 <= r["ci_high"]
    assert covered >= 34  # nominal 95 % of 40
    assert r["difference"] == pytest.approx(float(b.mean() - a.mean())) and r["n"] == r["n_groups"] == 50
    # pairing removes the shared variation: the paired interval is far narrower than the unpaired one
    lo_u, hi_u = two_sample_bootstrap_ci(a, b, lambda u, v, axis=-1: v.mean(axis) - u.mean(axis))
    assert r["ci_high"] - r["ci_low"] < 0.3 * (hi_u - lo_u)
    assert lo_u <= r["difference"] <= hi_u
    # no difference at all must score a point interval at 0
    same = paired_bootstrap_difference(a, a.copy())
    assert same["difference"] == same["ci_low"] == same["ci_high"] == 0.0
    # clustered pairs: two examples of identical span differences 0 and 1 give [0, 1] (as above)
    cl = paired_bootstrap_difference(np.zeros(10), np.r_[np.zeros(5), np.ones(5)], groups=[0] * 5 + [1] * 5)
    assert (cl["ci_low"], cl["ci_high"]) == (0.0, 1.0) and cl["n_groups"] == 2
    # another statistic: the difference of medians
    med = paired_bootstrap_difference([1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 5.0], statistic=np.median)
    assert med["difference"] == 1.0
    with pytest.raises(ValueError, match="equal length"):
        paired_bootstrap_difference([1.0, 2.0], [1.0])


def test_two_sample_bootstrap_hand_values() -> None:
    from metrics.stats import two_sample_bootstrap_ci

    def diff(u: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.asarray(np.mean(v, axis=axis) - np.mean(u, axis=axis))

    # a single value is the same in every resample; b = [1, 2] resamples to means 1, 1.5, 2
    # (probabilities 1/4, 1/2, 1/4), so mean(b) - 3 has the 95 % interval [-2, -1]
    assert two_sample_bootstrap_ci([3.0], [1.0, 2.0], diff) == (-2.0, -1.0)
    assert two_sample_bootstrap_ci([1.0, 2.0], [3.0], diff) == (1.0, 2.0)
    assert two_sample_bootstrap_ci([3.0], [5.0], diff) == (2.0, 2.0)
    # independent samples with a true shift of 1: the interval holds it; equal samples hold 0
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=80), rng.normal(1.0, size=60)
    lo, hi = two_sample_bootstrap_ci(a, b, diff)
    assert lo < 1.0 < hi and lo > 0.5
    lo0, hi0 = two_sample_bootstrap_ci(a, rng.normal(size=60), diff)
    assert lo0 < 0 < hi0
    with pytest.raises(ValueError, match="non-empty"):
        two_sample_bootstrap_ci([], [1.0], diff)


def test_faithfulness_metrics_accept_groups() -> None:
    # Two examples of three spans: the method points right on every span of the first and wrong on
    # every span of the second. Spans alone look like 6 independent trials; examples are 2.
    scores = np.array([[1.0, 0.0]] * 6)
    gt = [[0]] * 3 + [[1]] * 3
    ex = [0, 0, 0, 1, 1, 1]
    spans = pointing_accuracy(scores, gt)
    grouped = pointing_accuracy(scores, gt, groups=ex)
    assert spans.value == grouped.value == 0.5 and grouped.n == 6
    assert (grouped.ci_low, grouped.ci_high) == (0.0, 1.0)
    assert spans.ci_low > 0.0 and spans.ci_high < 1.0
    # a skipped span drops its label too
    skipped = pointing_accuracy(np.vstack([scores, [[1.0, 0.0]]]), [*gt, None], groups=[*ex, 2])
    assert skipped.n_skipped == 1 and (skipped.ci_low, skipped.ci_high) == (0.0, 1.0)
    with pytest.raises(ValueError, match="one label per row"):
        pointing_accuracy(scores, gt, groups=[0, 1])
    # top-K drop: raw and normalised intervals widen when examples are resampled
    rng = np.random.default_rng(0)
    level = np.repeat(rng.exponential(size=10), 5)
    d = level * 0.5 + 0.01 * rng.normal(size=50)
    o = level + 0.01 * rng.normal(size=50)
    g = np.repeat(np.arange(10), 5)
    plain, clustered = topk_drop(d, o), topk_drop(d, o, groups=g)
    for key in ("raw", "normalized"):
        assert plain[key].value == clustered[key].value
        assert clustered[key].ci_high - clustered[key].ci_low > plain[key].ci_high - plain[key].ci_low
    assert clustered["normalized"].ci_low < 0.5 < clustered["normalized"].ci_high
    # R² and LDS: the point estimates do not depend on the grouping; the intervals hold them
    big = rng.normal(size=(40, 6))
    res = r2(big + 0.5 * rng.normal(size=big.shape), big, groups=np.repeat(np.arange(8), 5))
    assert res.ci_low < res.value < res.ci_high and res.n == 40
    scores_l, subsets, actual = _lds_data(n=40)
    noisy = np.einsum("nmk,nk->nm", subsets, scores_l + rng.normal(size=scores_l.shape))
    res_l = lds(actual, noisy, groups=np.repeat(np.arange(10), 4))
    assert res_l.value == lds(actual, noisy).value and 0.3 < res_l.value < 0.95
    assert res_l.n == 40 and res_l.ci_low < res_l.value < res_l.ci_high
