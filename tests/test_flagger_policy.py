"""The failure flag ships only if it works: shown by default only when the flagger's held-out recall is at
least twice its false-positive rate, and always shown with those figures."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from attrib.cli.console import flag_label, load_flagger
from metrics.trajectory import TortuosityFlagger


def _flagger(heldout: dict[str, float] | None) -> dict[str, object]:
    fl = TortuosityFlagger(fpr=0.1)
    rng = np.random.default_rng(0)
    fl.fit([rng.random((6, 8)) for _ in range(20)])
    fl.heldout_ = heldout
    return fl.to_dict()


def test_works_hand_values() -> None:
    good = TortuosityFlagger.from_dict(_flagger({"fpr": 0.09, "recall": 0.25, "n_reference": 50, "n_failure": 40}))
    assert good.works() and good.heldout_figures() == {"fpr": 0.09, "recall": 0.25, "n_reference": 50, "n_failure": 40}
    # The larger of the target (0.1) and held-out FPR counts: 0.19 < 2 x 0.1.
    assert not TortuosityFlagger.from_dict(_flagger({"fpr": 0.05, "recall": 0.19})).works()
    assert not TortuosityFlagger.from_dict(_flagger({"fpr": 0.12, "recall": 0.2})).works()
    assert TortuosityFlagger.from_dict(_flagger({"fpr": 0.12, "recall": 0.24})).works()
    assert not TortuosityFlagger.from_dict(_flagger(None)).works()  # no figures, no default place


def test_default_flagger_needs_held_out_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weak, good = tmp_path / "weak.json", tmp_path / "good.json"
    weak.write_text(json.dumps(_flagger({"fpr": 0.1, "recall": 0.055, "n_reference": 619, "n_failure": 91})))
    good.write_text(json.dumps(_flagger({"fpr": 0.1, "recall": 0.4, "n_reference": 619, "n_failure": 91})))
    assert load_flagger(None, SimpleNamespace(default_flagger=lambda: weak)) is None
    assert "failure flag off" in capsys.readouterr().err
    assert load_flagger(str(weak), SimpleNamespace(default_flagger=lambda: None)) is not None  # asked for: used
    fl = load_flagger(None, SimpleNamespace(default_flagger=lambda: good))
    assert fl is not None and flag_label(fl) == "FLAG (catches 40% of failures, 10% false alarms, held out)"
    assert load_flagger("none", SimpleNamespace(default_flagger=lambda: good)) is None
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not a flagger"):
        load_flagger(str(bad), SimpleNamespace(default_flagger=lambda: None))


def test_v1_benchmark_flagger_is_off_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    import attrib

    # held-out recall 0.055 at FPR 0.10: under twice the FPR
    assert load_flagger(None, attrib.load("shapes-qwen25vl")) is None
    assert "--flagger" in capsys.readouterr().err


def test_bundled_flagger_is_on_by_default_and_says_what_it_watches(capsys: pytest.CaptureFixture[str]) -> None:
    import attrib

    fl = load_flagger(None, attrib.load())  # v2, stillness: held-out recall 0.448 at FPR 0.092
    assert fl is not None and fl.works() and fl.statistic == "stillness"
    h = fl.heldout_figures()
    assert h is not None and h["recall"] >= 2 * max(h["fpr"], fl.fpr)
    assert "failure flag off" not in capsys.readouterr().err
    assert flag_label(fl).startswith("FLAG (catches 45% of failures, 10% false alarms")
