"""End to end: collect, fit, evaluate on the bundled model (small)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from attrib.cli import main
from attrib.collect import CollectConfig, Collection, collect_many
from attrib.evaluation import design_matrix, design_rows, evaluate_methods, fit_estimator
from estimators.baselines import BASELINES, best_layer_index, contextcite_scores, register_baseline


@pytest.fixture(scope="module")
def colls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("faith")
    base = {"model": "shapes-qwen25vl", "k": 8, "shard_size": 4, "max_new_tokens": 120}  # the v1-benchmark model: small
    for split, extra, name in (("train", {"n": 8}, "train"), ("test", {"n": 3, "loo": True}, "test")):
        cfgs = [
            CollectConfig(dataset=f"shapes:{split}", n_subsets=8, region_method=m, **base, **extra)  # type: ignore[arg-type]
            for m in ("color", "voronoi")
        ]
        collect_many(cfgs, [d / name, d / f"cmp-{name}" / "voronoi-k8"])
        (d / f"cmp-{name}").mkdir(exist_ok=True)
        (d / f"cmp-{name}" / "color-k8").symlink_to(d / name)
    return d / "train", d / "test"


def test_design_matrix_and_fit(colls: tuple[Path, Path]) -> None:
    train = Collection.open(colls[0])
    exs = list(train.examples())
    x, y, g, used = design_matrix(exs, only_correct=False)
    n_spans = sum(e["features"].shape[0] for e in exs)
    assert x.shape == (n_spans * 8, 24) and y.shape == (n_spans * 8,) and len(np.unique(g)) == n_spans
    est, used = fit_estimator(train, loss="ridge", only_correct=False)
    assert est.coef_.shape == (4, 6) and used == len(exs)
    assert est.scale_coef_ is None  # the head is opt-in in the Python API
    d = design_rows(exs, only_correct=False)
    np.testing.assert_array_equal(d.x, x)
    # each row's span mass: its span's features summed over every region, repeated over its removal sets
    first = exs[0]["features"]
    for i in range(2):
        want = np.repeat(first[i : i + 1].sum(axis=1).reshape(1, -1), 8, axis=0)
        np.testing.assert_allclose(d.span_mass[8 * i : 8 * (i + 1)], want, rtol=1e-6)
    scaled, _ = fit_estimator(train, loss="ridge", only_correct=False, span_scale=True)
    assert scaled.scale_coef_ is not None and scaled.scale_coef_.shape == (4, 6)
    np.testing.assert_allclose(scaled.coef_, est.coef_)
    bad = [dict(exs[0], subset_deltas=np.full_like(exs[0]["subset_deltas"], np.nan))]
    with pytest.raises(ValueError, match=f"{exs[0]['uid']} \\(NaN/inf targets\\)"):
        design_matrix(bad, only_correct=False)
    empty = [dict(exs[1], subset_deltas=np.zeros((0, 8))), *bad]
    with pytest.raises(ValueError, match=f"2 training example.*{exs[1]['uid']} \\(empty targets\\)"):
        design_matrix(empty, only_correct=False)
    with pytest.raises(ValueError, match="no training examples"):
        design_matrix([], only_correct=False)
    assert 0 <= best_layer_index(exs) < 4


def test_evaluate_all_methods(colls: tuple[Path, Path]) -> None:
    import attrib

    est, _ = fit_estimator(Collection.open(colls[0]), loss="ridge", only_correct=False)
    res = evaluate_methods(Collection.open(colls[1]), est, loaded=attrib.load("shapes-qwen25vl"))
    assert res["n_examples"] == 3
    for name in ("estimator", "raw_attention", "leave_one_out", "contextcite", "integrated_gradients"):
        r = res["methods"][name]
        assert -1 <= r["lds"]["value"] <= 1 and 0 <= r["r2"]["value"] <= 1
        assert "top5_drop" in r and r["seconds_per_token"] > 0
    loo = res["methods"]["leave_one_out"]
    assert loo["r2"]["value"] == pytest.approx(1.0)
    assert loo["top5_drop_normalized"]["value"] == pytest.approx(1.0)
    assert res["methods"]["estimator"]["seconds_per_token"] < loo["seconds_per_token"]


def test_evaluate_refuses_a_model_that_did_not_make_the_collection(colls: tuple[Path, Path]) -> None:
    import attrib

    est, _ = fit_estimator(Collection.open(colls[0]), loss="ridge", only_correct=False)
    with pytest.raises(ValueError, match=r"not the one the test collection was made with \(shapes-qwen25vl"):
        evaluate_methods(Collection.open(colls[1]), est, loaded=attrib.load("shapes2-qwen25vl"), methods=["estimator"])


def test_cli_fit_evaluate(colls: tuple[Path, Path], tmp_path: Path) -> None:
    assert (
        main(["fit", "--train", str(colls[0]), "--out", str(tmp_path / "est"), "--loss", "ridge", "--all-examples"])
        == 0
    )
    meta = json.loads((tmp_path / "est.json").read_text())
    assert meta["region_method"] == "color" and meta["L"] == 4 and meta["H"] == 6
    assert meta["params"]["span_scale"] is True and "scale_offset" in meta  # attrib fit fits the head by default
    assert main(["fit", "--train", str(colls[0]), "--out", str(tmp_path / "e0"), "--no-span-scale"]) == 0
    assert "scale_offset" not in json.loads((tmp_path / "e0.json").read_text())
    out = tmp_path / "eval.json"
    args = ["evaluate", "--test", str(colls[1]), "--estimator", str(tmp_path / "est"), "--json", str(out)]
    args += ["--methods", "estimator,raw_attention,leave_one_out", "--heatmap", str(tmp_path / "w.png")]
    assert main(args) == 0
    d = json.loads(out.read_text())
    assert set(d["methods"]) == {"estimator", "raw_attention", "leave_one_out"} and d["n_spans"] > 0
    assert (tmp_path / "w.png").stat().st_size > 1000


def test_cli_evaluate_curves_and_region_comparison(colls: tuple[Path, Path], tmp_path: Path) -> None:
    d = colls[0].parent
    assert main(["fit", "--train", str(colls[0]), "--out", str(tmp_path / "est"), "--loss", "ridge"]) == 0
    out = tmp_path / "eval.json"
    args = ["evaluate", "--test", str(colls[1]), "--estimator", str(tmp_path / "est"), "--json", str(out)]
    args += ["--methods", "estimator,leave_one_out", "--train", str(colls[0]), "--sizes", "2,3,1000"]
    args += ["--compare-train", str(d / "cmp-train"), "--compare-test", str(d / "cmp-test")]
    args += ["--figures", str(tmp_path / "figs"), "--record-validation"]
    assert main(args) == 0
    res = json.loads(out.read_text())
    val = json.loads((tmp_path / "est.json").read_text())["validation"]
    assert val["lds"] == pytest.approx(res["methods"]["estimator"]["lds"]["value"], abs=1e-4)
    assert val["n_test_examples"] == 3
    eff = res["data_efficiency"]
    assert [r["n_train"] for r in eff[:2]] == [2, 3] and "skipped" in eff[2]
    assert all(-1 <= r["lds"]["value"] <= 1 and "top5_drop_normalized" in r for r in eff[:2])
    cmp = {r["region_method"]: r for r in res["region_comparison"]}
    assert set(cmp) == {"color", "voronoi"} and all(r["k"] == 8 for r in cmp.values())
    # The colour row re-fits the same estimator on the same data as the main table: same LDS.
    assert cmp["color"]["lds"]["value"] == pytest.approx(res["methods"]["estimator"]["lds"]["value"], abs=1e-6)
    for f in ("weights.png", "data_efficiency.png", "regions.png"):
        assert (tmp_path / "figs" / f).stat().st_size > 1000


def test_contextcite_recovers_additive_effects() -> None:
    rng = np.random.default_rng(0)
    true = rng.exponential(size=(2, 10))
    subsets = rng.random((40, 10)) < 0.5
    ex = {"subsets": subsets, "subset_deltas": (subsets.astype(float) @ true.T).T}
    s = contextcite_scores(ex, alpha=1e-4)
    assert np.corrcoef(s.ravel(), true.ravel())[0, 1] > 0.99
    with pytest.raises(ValueError, match="already registered"):
        register_baseline("contextcite")(BASELINES["contextcite"])


# ----------------------------------------------------------------------------- hand-built collections
class _Hand:
    """A collection built by hand (what evaluate_methods reads: examples() and config)."""

    def __init__(self, exs: list[dict[str, object]]) -> None:
        self._exs = exs
        self.config = {"dataset": "", "ablation_mode": "mask"}

    def examples(self):  # type: ignore[no-untyped-def]
        return iter(self._exs)


def _hand_collection(*, n_ex: int = 12, k: int = 8, m: int = 32, noise_only: bool = False, seed: int = 0) -> _Hand:
    """Spans whose true region effects are <w, features> exactly; subset drops are additive in those effects
    (``noise_only``: drops are noise that no attribution can predict)."""
    rng = np.random.default_rng(seed)
    w = np.array([[1.0, -2.0], [0.25, 2.0]])
    exs = []
    for i in range(n_ex):
        n_spans = 3
        feats = rng.random((n_spans, k, 2, 2))
        effect = np.einsum("sklh,lh->sk", feats, w)  # (n_spans, K)
        subsets = rng.random((m, k)) < 0.5
        deltas = rng.normal(size=(n_spans, m)) if noise_only else effect @ subsets.T.astype(float)
        exs.append(
            {
                "uid": f"h{i}",
                "features": feats,
                "subsets": subsets,
                "subset_deltas": deltas,
                "loo_deltas": effect,
                "spans": [{"start": j, "end": j + 1, "text": "x."} for j in range(n_spans)],
            }
        )
    return _Hand(exs)


def _true_estimator():  # type: ignore[no-untyped-def]
    from estimators.linear import LinearHeadEstimator

    est = LinearHeadEstimator(layer_head_shape=(2, 2))
    est.coef_ = np.array([[1.0, -2.0], [0.25, 2.0]])
    est.intercept_ = 0.0
    return est


def _check_noise_is_not_credited(res: dict[str, object]) -> None:
    """On noise targets no method may look faithful on the scored (held-out) removal sets."""
    for name, r in res["methods"].items():  # type: ignore[attr-defined]
        assert abs(r["lds"]["value"]) < 0.25, (name, r["lds"])


def test_hand_built_known_answers() -> None:
    res = evaluate_methods(_hand_collection(), _true_estimator(), methods=["estimator", "contextcite", "raw_attention"])
    est, cc, raw = (res["methods"][n] for n in ("estimator", "contextcite", "raw_attention"))
    assert est["lds"]["value"] == pytest.approx(1.0) and est["r2"]["value"] == pytest.approx(1.0)
    assert cc["lds"]["value"] > 0.95  # a linear surrogate recovers additive effects from 16 ablations
    assert raw["lds"]["value"] < est["lds"]["value"] - 0.1  # the wrong weighting must score lower
    # An estimator with the weights negated must score low (anti-correlated).
    bad = _true_estimator()
    bad.coef_ = -bad.coef_
    neg = evaluate_methods(_hand_collection(), bad, methods=["estimator"])["methods"]["estimator"]
    assert neg["lds"]["value"] == pytest.approx(-1.0) and neg["r2"]["value"] == pytest.approx(0.0)


def test_noise_targets_score_low_and_a_leaky_split_is_caught() -> None:
    noise = _hand_collection(noise_only=True)
    res = evaluate_methods(noise, _true_estimator(), methods=["estimator", "contextcite", "raw_attention"])
    _check_noise_is_not_credited(res)
    # Overlapping fit and scored sets are refused outright.
    with pytest.raises(ValueError, match="overlap"):
        evaluate_methods(noise, _true_estimator(), methods=["contextcite"], fit_subsets=slice(0, 20))
    # Swapping on purpose, so that contextcite fits on the very sets it is scored on (what a bug in the
    # protocol would do), makes it look faithful on pure noise: the check above catches that.
    import attrib.evaluation as ev

    real = ev.MethodContext

    def leaky(**kw):  # type: ignore[no-untyped-def]
        kw["fit_subsets"] = slice(16, 32)
        return real(**kw)

    ev.MethodContext = leaky  # type: ignore[misc]
    try:
        swapped = evaluate_methods(noise, _true_estimator(), methods=["contextcite"])
    finally:
        ev.MethodContext = real  # type: ignore[misc]
    assert swapped["methods"]["contextcite"]["lds"]["value"] > 0.5
    with pytest.raises(AssertionError):
        _check_noise_is_not_credited(swapped)


def test_estimator_variants_script(colls: tuple[Path, Path], tmp_path: Path) -> None:
    """examples/estimator_variants.py fits each variant on train, scores it on the held-out split, and the
    docs renderer reads its JSON; the scale head leaves every ranking (LDS, pointing) as it was."""
    import importlib.util
    import sys

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("estimator_variants", root / "examples" / "estimator_variants.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "variants.json"
    args = ["--train", str(colls[0]), "--validation", str(colls[1]), "--json", str(out)]
    args += ["--variants", "shared,span_scale,gated_2,prior_1,prior_1000", "--threads", "1", "--n-boot", "20"]
    assert mod.main(args) == 0
    d = json.loads(out.read_text())
    v = d["variants"]
    assert set(v) == {"shared", "span_scale", "gated_2", "prior_1", "prior_1000"}
    assert set(d["references"]) == {"raw_attention", "leave_one_out"}
    # a prior that dominates the direction ranks removal sets as raw attention does (LDS is a ranking metric)
    raw_lds = d["references"]["raw_attention"]["all"]["lds"]["value"]
    assert v["prior_1000"]["all"]["lds"]["value"] == pytest.approx(raw_lds, abs=0.02)
    assert v["prior_1000"]["all"]["lds"]["value"] != pytest.approx(v["span_scale"]["all"]["lds"]["value"], abs=0.02)
    assert v["span_scale"]["all"]["lds"]["value"] == pytest.approx(v["shared"]["all"]["lds"]["value"])
    assert v["span_scale"]["all"]["lds"]["n"] == v["shared"]["all"]["lds"]["n"] > 0
    assert d["references"]["leave_one_out"]["all"]["r2"]["value"] == pytest.approx(1.0)
    sys.path.insert(0, str(root / "examples"))
    try:
        spec2 = importlib.util.spec_from_file_location("tables_results", root / "examples" / "tables_results.py")
        assert spec2 is not None and spec2.loader is not None
        tables = importlib.util.module_from_spec(spec2)
        spec2.loader.exec_module(tables)
    finally:
        sys.path.remove(str(root / "examples"))
    lines = tables.estimator_variants(d)
    assert sum(line.startswith("| ") for line in lines) == 1 + 5 + 2  # header, five variants, two references
    assert "top region = LOO's" in lines[2]
    # the top-region agreement with leave-one-out, by hand: LOO's own scores agree on every scored span,
    # their negation on none; a span without a named object or with a zero all-regions drop is not scored
    rng = np.random.default_rng(0)
    loo = rng.normal(size=(3, 5))
    exs = [{"features": loo[:, :, None, None] * np.ones((1, 1, 2, 2)), "loo_deltas": loo}]
    meta = [{"objects": [[1], [], [2]], "all_deltas": np.array([0.5, 0.5, 0.0])}]
    same = mod._loo_top_agreement(exs, meta, lambda f: f.mean(axis=(2, 3)), 20)
    assert same["value"] == 1.0 and same["n"] == 1
    meta[0]["all_deltas"] = np.array([0.5, 0.5, 0.3])
    flipped = mod._loo_top_agreement(exs, meta, lambda f: -f.mean(axis=(2, 3)), 20)
    assert flipped["value"] == 0.0 and flipped["n"] == 2
    assert mod._loo_top_agreement(exs, [{"objects": None, "all_deltas": None}], lambda f: f, 20) is None
    assert any("per-span scale head" in line for line in lines)
