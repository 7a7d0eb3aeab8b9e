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
