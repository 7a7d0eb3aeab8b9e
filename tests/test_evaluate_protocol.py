"""The evaluation protocol of ``attrib evaluate``: populations, paired differences, clustered intervals,
ContextCite budgets, pointing by named object, insertion/deletion curves, seeds and resampled curves.

Hand-built collections with known answers, cases that must score low, and broken evaluations that must fail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attrib.evaluation import (
    choose_contextcite_alpha,
    data_efficiency,
    default_subset_split,
    estimator_seeds,
    evaluate_methods,
)
from estimators.baselines import MethodContext, contextcite_pool
from metrics.faithfulness import curve_auc, lds, lds_rows, mean_metric, paired_metric_difference

W = np.array([[1.0, -2.0], [0.25, 2.0]])
KINDS = ("planning", "object", "summary")


class _Hand:
    """A collection built by hand (what evaluate_methods reads: examples() and config)."""

    def __init__(self, exs: list[dict[str, Any]]) -> None:
        self._exs = exs
        self.config = {"dataset": "", "ablation_mode": "mask"}
        self.manifest = {"config": {"model": "m", "region_method": "color", "k": 8, "ablation_mode": "mask"}}
        self.path = Path("hand")

    def examples(self):  # type: ignore[no-untyped-def]
        return iter(self._exs)


def _hand(
    *, n_ex: int = 12, k: int = 8, m: int = 32, noise_only: bool = False, seed: int = 0, kinds: bool = True
) -> _Hand:
    """Three spans per example (planning, object, summary); true region effects are <w, features>; the planning
    span barely depends on the image (its features and effects are scaled by 1e-3), and its all-regions drop is tiny."""

    rng = np.random.default_rng(seed)
    exs = []
    for i in range(n_ex):
        n_spans = 3
        feats = rng.random((n_spans, k, 2, 2))
        feats[0] *= 1e-3
        effect = np.einsum("sklh,lh->sk", feats, W)
        subsets = rng.random((m, k)) < 0.5
        deltas = rng.normal(size=(n_spans, m)) if noise_only else effect @ subsets.T.astype(float)
        ex: dict[str, Any] = {
            "uid": f"h{i}",
            "correct": True,
            "features": feats,
            "subsets": subsets,
            "subset_deltas": deltas,
            "loo_deltas": effect,
            "all_deltas": effect.sum(1),
            "spans": [{"start": j, "end": j + 1, "text": "x."} for j in range(n_spans)],
            "regions": np.zeros((4, 4), dtype=np.int16),
        }
        if kinds:
            ex["span_kinds"] = list(KINDS)
            # the object span names one object: the region with the largest true effect
            ex["span_object_regions"] = [None, [int(np.argmax(effect[1]))], None]
        exs.append(ex)
    return _Hand(exs)


def _true_estimator():  # type: ignore[no-untyped-def]
    from estimators.linear import LinearHeadEstimator

    est = LinearHeadEstimator(layer_head_shape=(2, 2), loss="ridge")
    est.coef_ = W.copy()
    est.intercept_ = 0.0
    return est


# ----------------------------------------------------------------------------- metrics, by hand
def test_lds_rows_scores_constant_predictions_zero_on_the_same_rows() -> None:
    actual = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0], [4.0, 3.0, 2.0, 1.0]])
    pred = np.array([[1.0, 3.0, 2.0, 4.0], [0.0, 1.0, 2.0, 3.0], [5.0, 5.0, 5.0, 5.0]])
    rho, scored = lds_rows(actual, pred, constant_prediction="zero")
    # Row 0: rho = 1 - 6*2/(4*15) = 0.8; row 1: measured drops constant, never scored; row 2: constant
    # prediction, scored 0.
    assert scored.tolist() == [True, False, True]
    assert rho[0] == pytest.approx(0.8) and np.isnan(rho[1]) and rho[2] == 0.0
    res = lds(actual, pred, constant_prediction="zero")
    assert res.value == pytest.approx(0.4) and res.n == 2 and res.n_skipped == 1 and res.n_constant == 1
    skip = lds(actual, pred)
    assert skip.value == pytest.approx(0.8) and skip.n == 1 and skip.n_skipped == 2
    with pytest.raises(ValueError, match="constant_prediction"):
        lds_rows(actual, pred, constant_prediction="drop")  # type: ignore[arg-type]


def test_curve_auc_hand_values() -> None:
    x = [0.0, 0.5, 1.0]
    # trapezoids: 0.5 * (0 - 1) / 2 + 0.5 * (-1 - 2) / 2 = -1.0; a flat curve at -2 has area -2
    assert curve_auc(np.array([[0.0, -1.0, -2.0], [-2.0, -2.0, -2.0]]), x).tolist() == pytest.approx([-1.0, -2.0])
    with pytest.raises(ValueError, match="increase"):
        curve_auc(np.zeros((1, 3)), [0.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="P >= 2"):
        curve_auc(np.zeros((1, 3)), [0.0, 1.0])


def test_clustered_and_paired_intervals_hand_values() -> None:
    # Two equal examples (clusters) whose values are 1 and 3: a resample draws both clusters with
    # replacement, so its mean is 1, 2 or 3 with probability 1/4, 1/2, 1/4; the 95 % percentile interval is
    # [1, 3], while resampling the six spans one by one would give a much narrower one.
    v = np.array([1.0, 1.0, 1.0, 3.0, 3.0, 3.0])
    g = np.array([0, 0, 0, 1, 1, 1])
    clustered = mean_metric(v, groups=g, n_boot=4000)
    assert clustered.value == 2.0 and (clustered.ci_low, clustered.ci_high) == (1.0, 3.0)
    spans = mean_metric(v, n_boot=4000)
    assert spans.ci_high - spans.ci_low < 2.0
    # Paired difference a - b with b = a - d: the shared part cancels, only d (1 in cluster 0, 3 in cluster 1)
    # is resampled, so the interval is [1, 3] whatever the (large) shared values are.
    a = np.array([10.0, 50.0, -7.0, 100.0, 0.0, 3.0])
    d = paired_metric_difference(np.mean, [a], [a - v], groups=g, n_boot=4000)
    assert d.value == pytest.approx(2.0) and (d.ci_low, d.ci_high) == pytest.approx((1.0, 3.0))
    # The same difference on every unit: the interval is that point.
    same = paired_metric_difference(np.mean, [a], [a - 0.5], groups=g)
    assert (same.value, same.ci_low, same.ci_high) == pytest.approx((0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="unit counts differ"):
        paired_metric_difference(np.mean, [a], [a[:3]])


# ----------------------------------------------------------------------------- the protocol
def test_default_split_keeps_halves_at_64_and_gives_64_fit_sets_at_96() -> None:
    assert default_subset_split(64) == (slice(0, 32), slice(32, 64))
    assert default_subset_split(96) == (slice(0, 64), slice(64, 96))
    assert default_subset_split(8) == (slice(0, 4), slice(4, 8))


def test_populations_paired_differences_and_pointing_by_named_object() -> None:
    methods = ["estimator", "contextcite", "raw_attention", "leave_one_out"]
    res = evaluate_methods(_hand(), _true_estimator(), methods=methods, n_boot=200)
    pops = res["populations"]
    assert list(pops) == ["all", "image_dependent", "planning", "object", "summary"]
    assert pops["all"]["n_spans"] == 36 and pops["planning"]["n_spans"] == 12 and pops["all"]["n_examples"] == 12
    # today's layout is kept: methods.<name>.<metric>.value/ci_low/ci_high/n is the "all" population
    assert res["methods"] == pops["all"]["methods"] and res["interval_unit"] == "example"
    for pop in pops.values():
        est = pop["methods"]["estimator"]
        assert est["lds"]["value"] == pytest.approx(1.0) and est["r2"]["value"] == pytest.approx(1.0)
    # the planning spans' drops barely vary over the fit sets (their effects are ~1e-3 of the others'): the
    # fixed rule leaves them out
    dep = pops["image_dependent"]
    assert dep["n_spans"] == 24 and "fit_std" in dep["rule"]
    for rule in ("fit_max", "all_regions"):
        other = evaluate_methods(_hand(), _true_estimator(), methods=["estimator"], image_dependent=rule, n_boot=20)
        assert other["populations"]["image_dependent"]["n_spans"] == 24 and rule in other["protocol"]["image_dependent"]
    # paired: estimator minus method on the same spans; equals the difference of the two LDS values
    for pop, body in res["paired"].items():
        for name in ("contextcite", "raw_attention", "leave_one_out"):
            p = body[name]
            mine, theirs = pops[pop]["methods"]["estimator"]["lds"], pops[pop]["methods"][name]["lds"]
            assert p["value"] == pytest.approx(mine["value"] - theirs["value"])
            assert p["ci_low"] <= p["value"] <= p["ci_high"] and p["n"] == mine["n"] == theirs["n"]
    assert res["paired"]["all"]["raw_attention"]["ci_low"] > 0  # the wrong weighting loses, surely
    # pointing: only the object spans name one object; the estimator and LOO point at the largest effect
    pt = res["methods"]["estimator"]["pointing"]
    assert pt["n"] == 12 and pt["n_skipped"] == 24 and pt["value"] == 1.0
    assert res["methods"]["leave_one_out"]["pointing"]["value"] == 1.0
    assert "one object" in res["protocol"]["pointing"]


def test_pointing_skips_spans_whose_all_regions_drop_is_zero() -> None:
    coll = _hand()
    for ex in coll._exs[:5]:
        ex["all_deltas"] = np.array([ex["all_deltas"][0], 0.0, ex["all_deltas"][2]])
    res = evaluate_methods(coll, _true_estimator(), methods=["estimator"], n_boot=100)
    assert res["methods"]["estimator"]["pointing"]["n"] == 7


def test_a_method_that_predicts_nothing_scores_zero_on_the_same_spans() -> None:
    from estimators.baselines import BASELINES, Baseline

    BASELINES["_nothing"] = Baseline("_nothing", lambda ex, ctx: np.zeros(np.asarray(ex["loo_deltas"]).shape))
    try:
        res = evaluate_methods(_hand(), _true_estimator(), methods=["estimator", "_nothing"], n_boot=100)
    finally:
        del BASELINES["_nothing"]
    nothing, est = res["methods"]["_nothing"]["lds"], res["methods"]["estimator"]["lds"]
    assert nothing["value"] == 0.0 and nothing["n"] == est["n"] and nothing["n_constant"] == est["n"]
    assert res["methods"]["_nothing"]["r2"]["value"] == 0.0


def test_noise_scores_low_in_every_population() -> None:
    res = evaluate_methods(
        _hand(noise_only=True), _true_estimator(), methods=["estimator", "contextcite", "raw_attention"], n_boot=100
    )
    for pop, body in res["populations"].items():
        for name, r in body["methods"].items():
            if "lds" in r:
                assert abs(r["lds"]["value"]) < 0.35, (pop, name, r["lds"])


def test_the_image_dependent_rule_reads_no_scored_set() -> None:
    """Rewriting the scored removal sets' drops must not move a span in or out of the population."""
    for rule in ("fit_std", "fit_max", "all_regions"):
        a = evaluate_methods(_hand(), _true_estimator(), methods=["estimator"], image_dependent=rule, n_boot=50)
        scrambled = _hand()
        _, scored = default_subset_split(32)
        for ex in scrambled._exs:
            ex["subset_deltas"] = ex["subset_deltas"].copy()
            ex["subset_deltas"][:, scored] = np.random.default_rng(1).normal(size=ex["subset_deltas"][:, scored].shape)
        b = evaluate_methods(scrambled, _true_estimator(), methods=["estimator"], image_dependent=rule, n_boot=50)
        assert a["populations"]["image_dependent"]["n_spans"] == b["populations"]["image_dependent"]["n_spans"]
        assert a["populations"]["image_dependent"]["rule"] == b["populations"]["image_dependent"]["rule"]
    with pytest.raises(ValueError, match="image_dependent"):
        evaluate_methods(_hand(), _true_estimator(), methods=["estimator"], image_dependent="scored_variance")


def test_old_collections_fall_back_with_a_note() -> None:
    coll = _hand(kinds=False)
    for ex in coll._exs:
        del ex["all_deltas"]
        ex["span_gt_regions"] = [None, [int(np.argmax(ex["loo_deltas"][1]))], None]
    res = evaluate_methods(coll, _true_estimator(), methods=["estimator"], image_dependent="all_regions", n_boot=50)
    assert list(res["populations"]) == ["all", "image_dependent"]
    assert "fit_std" in res["populations"]["image_dependent"]["rule"]
    notes = " ".join(res["protocol"]["notes"])
    assert "uses fit_std" in notes and "ground-truth sentence" in notes
    assert res["protocol"]["pointing"] == "sentence text match" and res["methods"]["estimator"]["pointing"]["n"] == 12


def test_broken_evaluations_fail() -> None:
    noise = _hand(noise_only=True)
    # overlapping fit and scored sets are refused
    with pytest.raises(ValueError, match="overlap"):
        evaluate_methods(noise, _true_estimator(), methods=["contextcite"], fit_subsets=slice(0, 20))
    with pytest.raises(ValueError, match="overlap"):
        evaluate_methods(
            noise, _true_estimator(), methods=["contextcite"], fit_subsets=slice(16, 32), score_subsets=slice(16, 32)
        )
    # swapping the halves is a legitimate split: still nothing to credit on noise
    swapped = evaluate_methods(
        noise, _true_estimator(), methods=["contextcite"], fit_subsets=slice(16, 32), score_subsets=slice(0, 16)
    )
    assert abs(swapped["methods"]["contextcite"]["lds"]["value"]) < 0.25
    # a protocol bug that lets ContextCite fit on the scored sets makes noise look faithful: caught
    import attrib.evaluation as ev

    real = ev.MethodContext

    def leaky(**kw):  # type: ignore[no-untyped-def]
        kw["fit_subsets"] = slice(16, 32)
        return real(**kw)

    ev.MethodContext = leaky  # type: ignore[misc]
    try:
        leaked = evaluate_methods(noise, _true_estimator(), methods=["contextcite"], n_boot=50)
    finally:
        ev.MethodContext = real  # type: ignore[misc]
    assert leaked["methods"]["contextcite"]["lds"]["value"] > 0.5
    # 64 ablations cannot come from 16 fit sets without the model
    with pytest.raises(ValueError, match="64 ablations"):
        evaluate_methods(noise, _true_estimator(), methods=["contextcite_64"])


def test_contextcite_pool_tops_up_with_fresh_sets_never_the_scored_ones() -> None:
    ex = _hand()._exs[0]
    fresh = np.ones((48, 8), dtype=bool)
    ctx = MethodContext(fit_subsets=slice(0, 16), extra_fit_sets=lambda n: (fresh[:n], np.zeros((3, n))))
    sets, drops = contextcite_pool(ex, ctx, 64)
    assert sets.shape == (64, 8) and drops.shape == (3, 64)
    assert (sets[:16] == ex["subsets"][:16]).all() and sets[16:].all()
    sets32, _ = contextcite_pool(ex, MethodContext(fit_subsets=slice(0, 16)), 32)
    assert sets32.shape[0] == 16  # the 32-ablation surrogate uses what a small collection holds


def test_contextcite_alpha_is_chosen_on_validation() -> None:
    val = _hand(m=48)
    ch = choose_contextcite_alpha(val, grid=(1e-4, 10.0))
    # additive, noiseless effects: a tiny penalty fits them, a huge one zeroes every coefficient (LDS 0)
    assert ch["alphas"][32] == 1e-4 and ch["lds"]["32"]["10.0"] == 0.0 and ch["lds"]["32"]["0.0001"] > 0.9
    assert ch["alphas"][64] == ch["alphas"][32] and ch["budget_used"]["64"] == 32
    res = evaluate_methods(_hand(), _true_estimator(), methods=["contextcite"], contextcite_alpha=ch["alphas"])
    assert res["protocol"]["contextcite_alpha"]["32"] == 1e-4
    with pytest.raises(ValueError, match="needs >= 8"):
        choose_contextcite_alpha(_hand(m=4))


def test_seeds_and_resampled_data_efficiency() -> None:
    train, test = _hand(n_ex=10, seed=3), _hand(n_ex=6, seed=4)
    from estimators.linear import LinearHeadEstimator

    est = LinearHeadEstimator(loss="pearson", layer_head_shape=(2, 2), n_iter=200)
    seeds = estimator_seeds([train], test, est, 3, n_boot=50)  # type: ignore[list-item]
    lds_all = seeds["populations"]["all"]["lds"]
    assert seeds["seeds"] == [0, 1, 2] and len(lds_all["values"]) == 3 and lds_all["mean"] > 0.9
    eff = data_efficiency([train], test, (4, 10, 50), resamples=3, n_boot=50, n_iter=200)  # type: ignore[list-item]
    assert eff[0]["n_train"] == 4 and eff[0]["n_resamples"] == 3 and len(eff[0]["resamples"]) == 3
    assert eff[0]["lds"]["sd_resamples"] >= 0 and "lds_image_dependent" in eff[0]
    assert {"lds", "r2", "pointing"} <= set(eff[0]) and set(eff[0]["resamples"][0]) >= {"lds", "r2", "pointing"}
    assert eff[1]["n_resamples"] == 1  # every usable example: one fit
    assert "skipped" in eff[2]
    with pytest.raises(ValueError, match="seeds"):
        estimator_seeds([train], test, est, 0)  # type: ignore[list-item]


def test_cli_defaults_agree_with_the_library() -> None:
    import attrib.cli.evaluate as cli
    import attrib.evaluation as ev

    assert cli.DEFAULT_METHODS == ev.DEFAULT_METHODS
    assert cli.IMAGE_DEPENDENT_RULES == ev.IMAGE_DEPENDENT_RULES
    assert cli.IMAGE_DEPENDENT_MIN == ev.IMAGE_DEPENDENT_MIN


# ----------------------------------------------------------------------------- the benchmark's span information
def test_shapes_span_kinds_and_named_objects() -> None:
    from attrib.shapes.dataset import make_example
    from attrib.shapes.spans import describe_span, record_span_info, span_kind

    assert span_kind("I need to count the circles.") == "planning"
    assert span_kind("There is a large green circle at the right.") == "object"
    assert span_kind("There is a large red triangle<region><|copy|></region> at the bottom.") == "object"
    for text in ("So the count is 2.", "3 is more than 0.", "There is no red square.", "The count of squares is 3."):
        assert span_kind(text) == "summary"
    scene = make_example("test", 3).scene  # two small ... triangles, one large red square
    one = describe_span("There is a small purple triangle at the top left.", scene)  # wrong place, right object
    assert one.kind == "object" and one.object_mask is not None and (one.object_mask == scene.mask(5)).all()
    assert describe_span("The rightmost one is the small purple triangle.", scene).object_mask is not None
    assert describe_span("There is a large green circle at the right.", scene).object_mask is None  # no such object
    two = describe_span("There is a small blue triangle and a small purple triangle.", scene)
    assert two.object_mask is None  # names two objects
    assert describe_span("I need to find the rightmost triangle.", scene).object_mask is None
    ex = make_example("test", 3)
    info = record_span_info({"uid": "test-3", "question": ex.question.text})
    assert info is not None and info("There is a large red square at the left.").object_mask is not None
    assert record_span_info({"uid": "test-3", "question": "another benchmark version?"}) is None
    assert record_span_info({"uid": "nonsense"}) is None


def test_collections_record_what_the_protocol_needs_and_evaluate_uses_it(tmp_path: Path) -> None:
    import attrib
    from attrib.collect import CollectConfig, Collection, collect_many
    from attrib.evaluation import ExampleModel

    cfg = CollectConfig(
        model="shapes-qwen25vl",
        dataset="shapes:test",
        n=2,
        k=8,
        n_subsets=8,
        loo=True,
        shard_size=2,
        max_new_tokens=120,
    )
    collect_many([cfg], [tmp_path / "c"])
    coll = Collection.open(tmp_path / "c")
    exs = list(coll.examples())
    loaded = attrib.load("shapes-qwen25vl")
    for ex in exs:
        n = len(ex["spans"])
        assert ex["all_deltas"].shape == (n,) and len(ex["span_kinds"]) == n == len(ex["span_object_regions"])
        assert set(ex["span_kinds"]) <= set(KINDS)
        em = ExampleModel(loaded, ex, "shapes:test", "mask")
        again = em.runner.deltas(np.ones((1, 8), dtype=bool), em.spans)[0]
        assert np.allclose(ex["all_deltas"], again, atol=1e-4)
    est = _true_estimator()
    est.coef_ = np.ones((4, 6))
    res = evaluate_methods(
        coll, est, loaded=loaded, methods=["estimator", "contextcite_64", "leave_one_out"], auc_steps=4, n_boot=50
    )
    assert {"all", "image_dependent"} <= set(res["populations"]) and "derived" not in " ".join(res["protocol"]["notes"])
    loo = res["methods"]["leave_one_out"]
    for key in ("deletion_auc", "insertion_auc", "lds", "r2"):
        assert key in loo and key in res["methods"]["contextcite_64"]
    # the leave-one-out ordering removes the most damaging regions first: its deletion curve falls at least as
    # fast as the estimator's on average (lower area), and its insertion curve recovers faster (higher area)
    assert "deletion_auc" in res["paired"]["all"]["leave_one_out"]
    # an older collection without the new fields: the same populations, derived (with notes)
    for ex in exs:
        for key in ("all_deltas", "span_kinds", "span_object_regions"):
            ex.pop(key)
    old = _Hand(exs)
    old.config = dict(coll.config)
    res_old = evaluate_methods(old, est, loaded=loaded, methods=["estimator"], auc_steps=0, n_boot=50)
    notes = " ".join(res_old["protocol"]["notes"])
    assert "recomputed" in notes and "derived" in notes
    for pop, body in res["populations"].items():
        assert res_old["populations"][pop]["n_spans"] == body["n_spans"], pop


def test_insertion_and_deletion_curves_hand_values() -> None:
    """Additive effects (4, 3, 2, 1) on one span, K = 4, 4 steps: deleting in the right order drops the
    log-prob by 0, 4, 7, 9, 10 (area -6.25 over the removed fraction); keeping the top regions alone leaves
    drops of 10, 6, 3, 1, 0 (area -3.75). The reversed order is worse on both."""
    from types import SimpleNamespace

    from attrib.evaluation import _auc, _curves

    effect = np.array([[4.0, 3.0, 2.0, 1.0]])
    runner = SimpleNamespace(deltas=lambda sets, spans: np.asarray(sets, dtype=float) @ effect.T)
    em = SimpleNamespace(runner=runner, spans=[(0, 1)])
    curves = _curves(em, {"right": effect.copy(), "reversed": -effect}, effect.sum(1), 4)  # type: ignore[arg-type]
    dele, ins = curves["right"]
    assert dele.tolist() == [[0.0, -4.0, -7.0, -9.0, -10.0]] and ins.tolist() == [[-10.0, -6.0, -3.0, -1.0, 0.0]]
    assert _auc([dele], 4, 4).tolist() == pytest.approx([-6.25])  # type: ignore[union-attr]
    assert _auc([ins], 4, 4).tolist() == pytest.approx([-3.75])  # type: ignore[union-attr]
    rd, ri = curves["reversed"]
    assert _auc([rd], 4, 4)[0] > -6.25 and _auc([ri], 4, 4)[0] < -3.75  # type: ignore[index]
