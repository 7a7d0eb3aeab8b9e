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


# ---------------------------------------------------------------- the direct-only control

K, L, H, M = 6, 2, 2, 12


def _chain(rng: np.random.Generator, uid: str, *, signal: str, n: int = 6) -> dict[str, Any]:
    """One example of ``n`` spans; span i names region ``i % K``, which alone drives its drops.

    ``signal`` says where the attention on that region comes from: ``"via"`` (only through copy
    tokens, as a copy of the object's cells), ``"direct"`` (the region's own image tokens) or
    ``"none"`` (no extra attention: a model whose attention ignores the object).
    """
    gt = [[i % K] for i in range(n)]
    direct = rng.random((n, K, L, H)) * 0.1
    via = np.zeros((n, K, L, H))
    effect = rng.normal(0, 0.05, (n, K))
    for i, (g,) in enumerate(gt):
        effect[i, g] += 1.0
        if signal == "via":
            via[i, g] += 0.5
        elif signal == "direct":
            direct[i, g] += 0.5
    subsets = np.zeros((M, K), dtype=bool)
    while True:  # every region removed in some held-out set and kept in another
        subsets = rng.random((M, K)) < 0.5
        if subsets[M // 2 :].any(axis=0).all() and (~subsets[M // 2 :]).any(axis=0).all():
            break
    ex: dict[str, Any] = {
        "uid": uid,
        "correct": True,
        "features": (direct + via).astype(np.float32),
        "subsets": subsets,
        "subset_deltas": (effect @ subsets.T.astype(np.float64)).astype(np.float32),
        "loo_deltas": effect.astype(np.float32),
        "span_gt_regions": gt,
        "spans": [{"text": f"s{i}", "start": 2 * i, "end": 2 * i + 2} for i in range(n)],
    }
    if signal in ("via", "direct"):  # a point-and-copy model (the base, "none", stores no part)
        ex["parts"] = {"via_copy": via.astype(np.float32)}
        ex["copy_sources"] = [-1] * (2 * n)
        if signal == "via":
            ex["copy_sources"][1] = 0  # one copy token, in the first span
    return ex


def _chains(signal: str, n: int = 30, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [_chain(rng, f"ex{j}", signal=signal) for j in range(n)]


def _attention(f: np.ndarray) -> np.ndarray:
    return np.asarray(f, dtype=np.float64).mean(axis=(2, 3))


def test_direct_features_subtract_the_via_copy_part() -> None:
    from attrib.analysis.pointcopy import direct_features, with_direct_features

    f = np.ones((2, 3, 1, 1))
    via = np.zeros_like(f)
    via[1, 2] = 0.75
    ex = {"uid": "a", "features": f, "parts": {"via_copy": via}, "copy_sources": [-1, 2]}
    d = direct_features(ex)
    assert d[1, 2, 0, 0] == 0.25 and d.sum() == pytest.approx(6 - 0.75)
    once = with_direct_features([ex])
    np.testing.assert_array_equal(once[0]["features"], d)
    np.testing.assert_array_equal(with_direct_features(once)[0]["features"], d)  # not taken away twice
    np.testing.assert_array_equal(ex["features"], f)  # the input is left alone
    plain = {"uid": "b", "features": f}  # a plain model: everything is direct
    np.testing.assert_array_equal(direct_features(plain), f)
    no_copies = {"uid": "c", "features": f, "copy_sources": [-1, -1]}
    np.testing.assert_array_equal(direct_features(no_copies), f)
    with pytest.raises(ValueError, match="collect it again"):
        direct_features({"uid": "d", "features": f, "copy_sources": [-1, 4]})
    with pytest.raises(ValueError, match="shape"):
        direct_features({"uid": "e", "features": f, "parts": {"via_copy": via[:1]}})


def test_a_copy_only_signal_vanishes_under_direct_only() -> None:
    from attrib.analysis.pointcopy import total_and_direct

    res = total_and_direct(_chains("via"), {"raw_attention": (_attention, _attention)})
    m = res["methods"]["raw_attention"]
    assert res["n_examples"] == 30 and res["n_spans"] == 180 and 0.1 < res["via_share"] < 0.9
    # through copies the attention points at the object and ranks the drops; without them it is noise
    assert m["total"]["pointing"]["value"] == 1.0 and m["total"]["pointing"]["n"] == 180
    assert m["direct_only"]["pointing"]["value"] < 0.4  # chance is 1/6
    # (positive noise still earns some LDS: sets that remove more regions tend to hold the object)
    assert m["total"]["lds"]["value"] > 0.6 and m["direct_only"]["lds"]["value"] < 0.35
    assert m["total"]["r2"]["value"] > 0.8 and m["direct_only"]["r2"]["value"] < 0.1
    d = m["direct_minus_total"]
    assert d["pointing"]["difference"] < -0.6 and d["pointing"]["ci_high"] < 0 and d["pointing"]["n_groups"] == 30
    assert d["lds"]["difference"] < -0.4 and d["lds"]["ci_high"] < 0


def test_a_direct_signal_survives_direct_only() -> None:
    from attrib.analysis.pointcopy import faithfulness, total_and_direct

    exs = _chains("direct")
    m = total_and_direct(exs, {"raw_attention": (_attention, _attention)})["methods"]["raw_attention"]
    assert m["total"] == m["direct_only"]  # no copies: nothing taken away
    assert m["direct_only"]["pointing"]["value"] == 1.0 and m["direct_only"]["lds"]["value"] > 0.6
    assert m["direct_minus_total"]["pointing"]["difference"] == 0.0
    # the same figures from the plain function; the interval resamples examples (30 of them)
    plain = faithfulness(exs, {"raw_attention": _attention}, direct=True)["methods"]["raw_attention"]
    assert plain == m["direct_only"]


def test_refit_on_direct_features_cannot_recover_a_copy_only_signal() -> None:
    from attrib.analysis.pointcopy import total_and_direct, with_direct_features
    from estimators.linear import LinearHeadEstimator, subset_design

    def fit(exs: list[dict[str, Any]]) -> LinearHeadEstimator:
        x = np.concatenate([subset_design(e["features"], e["subsets"]).reshape(-1, L * H) for e in exs])
        y = np.concatenate([np.asarray(e["subset_deltas"]).reshape(-1) for e in exs])
        return LinearHeadEstimator(loss="ridge", layer_head_shape=(L, H)).fit(x, y)

    train = _chains("via", seed=1)
    total, direct = fit(train), fit(with_direct_features(train))
    res = total_and_direct(_chains("via"), {"estimator_refit": (total.region_scores, direct.region_scores)})
    m = res["methods"]["estimator_refit"]
    assert m["total"]["lds"]["value"] > 0.6 and m["direct_only"]["lds"]["value"] < 0.35
    assert m["direct_only"]["pointing"]["value"] < 0.4


def test_clustered_difference_resamples_examples_hand_values() -> None:
    from attrib.analysis.pointcopy import clustered_difference

    # reference: one span per example, all 0; other: example e1 has three spans at 1, e2 one at 0.
    # Drawing examples: {e1, e1} gives 1, {e2, e2} gives 0, {e1, e2} gives 3/4 (p = 1/4, 1/4, 1/2).
    c = clustered_difference([0.0, 0.0], ["e1", "e2"], [1.0, 1.0, 1.0, 0.0], ["e1", "e1", "e1", "e2"])
    assert c["difference"] == 0.75 and (c["ci_low"], c["ci_high"]) == (0.0, 1.0)
    assert (c["n_a"], c["n_b"], c["n_examples"]) == (2, 4, 2)
    same = clustered_difference([0.5, 0.5], ["e1", "e2"], [0.5, 0.5], ["e1", "e2"])
    assert same["difference"] == same["ci_low"] == same["ci_high"] == 0.0
    empty = clustered_difference([], [], [1.0], ["e1"])
    assert np.isnan(empty["difference"]) and np.isnan(empty["ci_low"])
    with pytest.raises(ValueError, match="label per value"):
        clustered_difference([1.0], [], [1.0], ["e1"])


def test_late_chain_gain_from_copies_alone_vanishes_under_direct_only() -> None:
    from attrib.analysis.pointcopy import with_direct_features

    base, v1 = _chains("none", seed=2), _chains("via", seed=3)
    score = lambda ex: _attention(ex["features"])  # noqa: E731
    kw: dict[str, Any] = {"buckets": ((2, 10),)}
    total = late_chain_attribution({"base": base, "v1": v1}, score, **kw)["buckets"][0]["comparison"]
    assert total["difference"] > 0.3 and total["examples_ci_low"] > 0 and total["n_examples"] == 30
    direct = late_chain_attribution({"base": base, "v1": with_direct_features(v1)}, score, **kw)["buckets"][0]
    c = direct["comparison"]
    assert abs(c["difference"]) < 0.05 and c["examples_ci_low"] < 0 < c["examples_ci_high"]
    # a model that looks at the object directly keeps its gain
    v1d = _chains("direct", seed=3)
    kept = late_chain_attribution({"base": base, "v1": with_direct_features(v1d)}, score, **kw)["buckets"][0]
    assert kept["comparison"]["difference"] > 0.3 and kept["comparison"]["examples_ci_low"] > 0


def _write_collection(path: Any, exs: list[dict[str, Any]]) -> None:
    """A collection on disk, through the pipeline's own shard layout."""
    import json

    from attrib.collect.pipeline import CollectConfig, shard_arrays
    from attrib.collect.store import write_shard

    cfg = CollectConfig(n=len(exs), k=K, n_subsets=M, loo=True)
    keys = ("uid", "correct", "span_gt_regions", "spans", "copy_sources")
    results = [
        {
            **{k: e[k] for k in ("features", "subsets", "subset_deltas", "loo_deltas")},
            "all_deltas": np.asarray(e["loo_deltas"]).sum(axis=1),  # every region removed (not read here)
            "regions": np.zeros((4, 4), dtype=np.int16),
            **({"parts": e["parts"]} if "parts" in e else {}),
            "record": {k: e[k] for k in keys if k in e},
        }
        for e in exs
    ]
    arrays, recs, _ = shard_arrays(cfg, results, [])
    path.mkdir()
    write_shard(path, "shard-00000", arrays, recs)
    manifest = {"config": cfg.identity(), "shards": [{"name": "shard-00000"}], "failures": []}
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_run_analysis_reports_direct_only_beside_total(tmp_path: Any) -> None:
    from attrib.cli import main
    from attrib.collect.store import Collection
    from estimators.linear import LinearHeadEstimator

    base, v1 = _chains("none", seed=4), _chains("via", seed=5)
    for name, exs in (("base", base), ("v1", v1), ("v1-train", _chains("via", seed=6))):
        _write_collection(tmp_path / name, exs)
    # the stored via-copy part reads back as written
    back = list(Collection.open(tmp_path / "v1").examples())
    np.testing.assert_array_equal(back[3]["parts"]["via_copy"], v1[3]["parts"]["via_copy"])
    assert "parts" not in next(iter(Collection.open(tmp_path / "base").examples()))
    est = LinearHeadEstimator(layer_head_shape=(L, H))
    est.coef_, est.intercept_ = np.ones((L, H)), 0.0  # = raw attention, up to scale
    est.save(tmp_path / "est")
    out = tmp_path / "v1.json"
    args = ["v1", "--base-test", str(tmp_path / "base"), "--v1-test", str(tmp_path / "v1")]
    args += ["--base-estimator", str(tmp_path / "est"), "--v1-estimator", str(tmp_path / "est")]
    args += ["--v1-train", str(tmp_path / "v1-train"), "--refit-loss", "ridge", "--json", str(out)]
    args += ["--save-refit", str(tmp_path / "refit")]
    assert main(args) == 0
    import json

    res = json.loads(out.read_text())
    # existing keys stay; the direct-only analyses sit beside them
    for key in ("decay", "late_chain", "late_chain_attention", "late_chain_no_own_copies", "copy_share"):
        assert key in res
    assert set(res["direct_only"]) >= {"late_chain", "late_chain_attention", "late_chain_refit"}
    last = -1
    assert res["late_chain"]["buckets"][last]["comparison"]["examples_ci_low"] > 0
    c = res["direct_only"]["late_chain"]["buckets"][last]["comparison"]
    assert c["examples_ci_low"] < 0 < c["examples_ci_high"]
    f = res["faithfulness"]
    assert f["base"]["direct_equals_total"] and f["base"]["n_examples"] == 30
    est_v1 = f["v1"]["methods"]["estimator"]
    assert est_v1["total"]["pointing"]["value"] == 1.0 and est_v1["direct_only"]["pointing"]["value"] < 0.4
    refit = f["v1"]["methods"]["estimator_refit"]
    assert refit["total"]["lds"]["value"] > 0.6 and refit["direct_only"]["lds"]["value"] < 0.35
    vs = f["v1_minus_base"]["estimator"]
    assert vs["total"]["pointing"]["ci_low"] > 0 and vs["direct_only"]["pointing"]["ci_low"] < 0.1
    assert f["v1_minus_base"]["estimator_refit"]["base_method"] == "estimator"
    assert f["refit"]["n_train_examples"] == 30 and f["refit"]["loss"] == "ridge"
    assert (tmp_path / "refit-direct_only.safetensors").is_file() and (tmp_path / "refit-total.json").is_file()
