"""End to end: collect, fit, evaluate on the bundled model (small)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from attrib.cli import main
from attrib.collect import CollectConfig, Collection, collect_many
from attrib.evaluation import design_matrix, evaluate_methods, fit_estimator
from estimators.baselines import BASELINES, best_layer_index, contextcite_scores, register_baseline


@pytest.fixture(scope="module")
def colls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("faith")
    base = {"k": 8, "shard_size": 4, "max_new_tokens": 120}
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
    res = evaluate_methods(Collection.open(colls[1]), est, loaded=attrib.load())
    assert res["n_examples"] == 3
    for name in ("estimator", "raw_attention", "leave_one_out", "contextcite", "integrated_gradients"):
        r = res["methods"][name]
        assert -1 <= r["lds"]["value"] <= 1 and 0 <= r["r2"]["value"] <= 1
        assert "top5_drop" in r and r["seconds_per_token"] > 0
    loo = res["methods"]["leave_one_out"]
    assert loo["r2"]["value"] == pytest.approx(1.0)
    assert loo["top5_drop_normalized"]["value"] == pytest.approx(1.0)
    assert res["methods"]["estimator"]["seconds_per_token"] < loo["seconds_per_token"]


def test_cli_fit_evaluate(colls: tuple[Path, Path], tmp_path: Path) -> None:
    assert (
        main(["fit", "--train", str(colls[0]), "--out", str(tmp_path / "est"), "--loss", "ridge", "--all-examples"])
        == 0
    )
    meta = json.loads((tmp_path / "est.json").read_text())
    assert meta["region_method"] == "color" and meta["L"] == 4 and meta["H"] == 6
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
