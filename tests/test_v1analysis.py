"""v1 analyses on hand-made data: hand-computed values, and cases that must score low."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from attrib.analysis.pointcopy import (
    attention_by_position,
    cliffs_delta,
    compare_decay,
    copy_vs_source_by_layer,
    gt_share,
    late_chain_attribution,
)


def test_cliffs_delta_and_gt_share_hand_values() -> None:
    assert cliffs_delta([1, 2, 3], [0, 0, 0]) == 1.0
    assert cliffs_delta([0, 0], [1, 2]) == -1.0
    assert cliffs_delta([1, 2], [1, 2]) == 0.0
    assert cliffs_delta([1, 3], [2]) == 0.0  # one above, one below
    assert np.isnan(cliffs_delta([], [1]))
    assert gt_share(np.array([1.0, -1.0, 3.0]), [2]) == pytest.approx(0.75)
    assert gt_share(np.array([1.0, 1.0]), [0, 1]) == pytest.approx(1.0)
    assert np.isnan(gt_share(np.array([-1.0, -2.0]), [0]))


def _ex(masses: list[float], gt: list[list[int] | None], k: int = 4) -> dict[str, Any]:
    """Spans whose region-0 attention mass is given; L = H = 2."""
    f = np.zeros((len(masses), k, 2, 2))
    for i, m in enumerate(masses):
        f[i, 0] = m
        f[i, 1] = 0.1
    return {"features": f, "span_gt_regions": gt}


def test_attention_by_position_hand_values() -> None:
    a = attention_by_position([_ex([0.5, 0.3], [[0], None])])
    np.testing.assert_allclose(a["image_mass"], [0.6, 0.4])
    np.testing.assert_allclose(a["gt_mass"][:1], [0.5])
    assert np.isnan(a["gt_mass"][1])
    np.testing.assert_allclose(a["relative"], [0.0, 1.0])
    np.testing.assert_allclose(a["chain_len"], [2, 2])


def test_compare_decay_separates_a_decaying_model_from_a_flat_one() -> None:
    rng = np.random.default_rng(0)
    decaying = [_ex(list(0.8 - 0.1 * np.arange(6) + rng.normal(0, 0.01, 6)), [[0]] * 6) for _ in range(30)]
    flat = [_ex(list(0.5 + rng.normal(0, 0.01, 6)), [[0]] * 6) for _ in range(30)]
    res = compare_decay({"base": decaying, "v1": flat})
    s_dec, s_flat = res["base"]["gt_mass_slope"], res["v1"]["gt_mass_slope"]
    assert s_dec["slope"] == pytest.approx(-0.5, abs=0.02)  # -0.1 per span over 5 steps of relative position
    assert s_dec["ci_high"] < 0
    assert abs(s_flat["slope"]) < 0.01  # the flat model must not show a decay
    assert s_flat["ci_low"] > s_dec["ci_high"]
    first = res["base"]["by_position"][0]
    assert first["position"] == 0 and first["n"] == 30 and first["gt_mass"] == pytest.approx(0.8, abs=0.01)


def test_late_chain_attribution_finds_a_real_difference_and_not_a_fake_one() -> None:
    rng = np.random.default_rng(1)

    def chains(late_gt: float, n: int = 40, length: int = 6) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            s = rng.random((length, 4)) * 0.2
            s[-2:, 0] += late_gt  # region 0 is the ground truth of every span
            out.append({"features": s, "span_gt_regions": [[0]] * length})
        return out

    score = lambda ex: ex["features"]  # noqa: E731
    res = late_chain_attribution({"base": chains(0.0), "v1": chains(1.0)}, score, buckets=((2, 10),))
    row = res["buckets"][0]
    assert res["reference"] == "base" and res["other"] == "v1"
    assert row["comparison"]["difference"] > 0.3 and row["comparison"]["ci_low"] > 0
    assert row["comparison"]["p_value"] < 1e-6 and row["comparison"]["cliffs_delta"] > 0.8
    same = late_chain_attribution({"base": chains(0.5), "v1": chains(0.5)}, score, buckets=((2, 10),))
    c = same["buckets"][0]["comparison"]
    assert c["p_value"] > 0.01 and abs(c["cliffs_delta"]) < 0.3 and c["ci_low"] < 0 < c["ci_high"]
    empty = late_chain_attribution({"base": chains(0.0), "v1": chains(1.0)}, score, buckets=((20, 30),))
    assert "comparison" not in empty["buckets"][0]
    with pytest.raises(ValueError, match="two models"):
        late_chain_attribution({"base": []}, score)


def test_late_chain_interval_hand_values() -> None:
    # Chains of 3 spans: with late_fraction 1/3 only the last span is late; region 0 is its ground truth.
    def ex(last: list[float]) -> dict[str, Any]:
        return {"features": np.array([[1.0, 1.0], [1.0, 1.0], last]), "span_gt_regions": [[0]] * 3}

    base = [ex([1.0, 1.0]), ex([2.0, 2.0])]  # shares 0.5 and 0.5
    v1 = [ex([1.0, 0.0]), ex([3.0, 1.0])]  # shares 1.0 and 0.75
    res = late_chain_attribution({"base": base, "v1": v1}, lambda e: e["features"], buckets=((3, 3),))
    c = res["buckets"][0]["comparison"]
    # The models' spans are resampled independently: base always averages 0.5; v1 averages 1, 0.875
    # or 0.75 (probabilities 1/4, 1/2, 1/4), so the difference's 95 % interval is [0.25, 0.5].
    assert c["difference"] == 0.375
    assert (c["ci_low"], c["ci_high"]) == (0.25, 0.5)
    # no difference at all: a point interval at 0
    same = late_chain_attribution({"base": base, "v1": base}, lambda e: e["features"], buckets=((3, 3),))
    c0 = same["buckets"][0]["comparison"]
    assert c0["difference"] == c0["ci_low"] == c0["ci_high"] == 0.0


def test_decay_slope_interval_of_an_exact_line() -> None:
    # Ground-truth mass falls exactly linearly with the relative position: every resample's slope is
    # the same, so the bootstrap interval collapses onto it (the slope resamples (x, y) pairs by index).
    exs = [_ex([0.8 - 0.1 * i for i in range(6)], [[0]] * 6) for _ in range(10)]
    s = compare_decay({"base": exs, "v1": exs})["base"]["gt_mass_slope"]
    assert s["slope"] == pytest.approx(-0.5)
    assert s["ci_low"] == pytest.approx(-0.5) and s["ci_high"] == pytest.approx(-0.5)


def test_late_chain_can_leave_out_spans_that_copy_their_own_object() -> None:
    from attrib.analysis.pointcopy import copy_share_by_position

    # 3 spans of 4 tokens; the last span holds a copy (token 9) and puts everything on its ground truth
    scores = np.array([[0.5, 0.5], [0.25, 0.75], [1.0, 0.0]])
    ex = {
        "features": scores,
        "span_gt_regions": [[0], [0], [0]],
        "spans": [{"start": 0, "end": 4}, {"start": 4, "end": 8}, {"start": 8, "end": 12}],
        "copy_sources": [-1] * 9 + [3, -1, -1],
        "span_copy_share": [0.0, 0.2, 0.6],
    }
    plain = {"features": scores, "span_gt_regions": [[0], [0], [0]]}  # no copies: nothing is left out
    kw: dict[str, Any] = {"buckets": ((3, 3),), "late_fraction": 2 / 3}
    score = lambda e: e["features"]  # noqa: E731
    with_own = late_chain_attribution({"base": [plain], "v1": [ex]}, score, **kw)["buckets"][0]
    assert with_own["v1"] == {"n": 2, "mean": pytest.approx((0.25 + 1.0) / 2)}
    without = late_chain_attribution({"base": [plain], "v1": [ex]}, score, skip_own_copies=True, **kw)
    row = without["buckets"][0]
    assert without["skip_own_copies"] is True
    assert row["v1"] == {"n": 1, "mean": pytest.approx(0.25)} and row["base"]["n"] == 2
    share = copy_share_by_position([ex, ex], max_position=1)
    assert share["overall"] == pytest.approx(0.8 / 3) and share["n_spans"] == 6
    assert share["by_position"] == [{"position": 0, "n": 2, "mean": 0.0}, {"position": 1, "n": 4, "mean": 0.4}]


def test_copy_vs_source_by_layer_hand_values() -> None:
    # 3 generated tokens, K = 2 image tokens, L = 2, H = 1; token 0 copies image token 1.
    per_token = np.zeros((3, 2, 2, 1))
    via = np.zeros((3, 2, 2, 1))
    per_token[1, 1, :, 0] = [0.5, 0.7]  # after the copy: 0.5 / 0.7 on image token 1 (direct + via)
    via[1, 1, :, 0] = [0.2, 0.6]
    cap = SimpleNamespace(per_token=per_token, per_token_copy=via)
    res = copy_vs_source_by_layer([cap], [[1, -1, -1]])
    assert res["n_tokens"] == 2  # tokens 1 and 2 come after the copy
    np.testing.assert_allclose(res["copy_mass"], [0.1, 0.3])
    np.testing.assert_allclose(res["source_mass"], [0.15, 0.05])
    with pytest.raises(ValueError, match="per_token=True"):
        copy_vs_source_by_layer([SimpleNamespace(per_token=None)], [[0]])


def test_copy_attention_refuses_a_plain_model() -> None:
    from attrib.analysis.pointcopy import copy_attention

    with pytest.raises(ValueError, match="not a point-and-copy model"):
        copy_attention("shapes-qwen25vl", n=1)
