"""The bundled models behave exactly as recorded before the layout change (examples/check_behaviour.py --quick)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _checker():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("check_behaviour", ROOT / "examples" / "check_behaviour.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_streamed_and_collected_results_equal_the_reference(tmp_path: Path) -> None:
    chk = _checker()
    out = tmp_path / "check.json"
    assert chk.main(["--quick", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["errors"] == []


def test_the_check_fails_on_a_changed_reference(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Break it on purpose: one score moved by 1e-3 and one span text changed must be reported."""
    chk = _checker()
    ref = json.loads(chk.REFERENCE.read_text())
    ref["stream"][0]["spans"][0]["scores"][0] += 1e-3
    ref["stream"][0]["spans"][1]["text"] = "A sentence the model never wrote."
    bad = tmp_path / "ref.json"
    bad.write_text(json.dumps(ref))
    monkeypatch.setattr(chk, "REFERENCE", bad)
    errors = chk.check_stream(1)
    assert any("span 0: scores differ" in e for e in errors)
    assert any("span 1:" in e and "!= reference" in e for e in errors)
