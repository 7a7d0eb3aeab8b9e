"""examples/bench_faithfulness.py: the stages it runs, in order, and the JSON it leaves (the CLI stubbed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("bench_faithfulness", ROOT / "examples" / "bench_faithfulness.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_stages_and_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import attrib.cli

    calls: list[list[str]] = []

    def fake_main(args: list[str]) -> int:
        calls.append(list(args))
        if args[0] == "evaluate":
            out = Path(args[args.index("--json") + 1])
            out.write_text(json.dumps({"methods": {"estimator": {"lds": {"value": 0.5}}}, "n_examples": 3}))
        return 0

    monkeypatch.setattr(attrib.cli, "main", fake_main)
    bench = _load()
    out = tmp_path / "b.json"
    assert bench.main(["--json", str(out), "--quick", "--work", str(tmp_path / "w"), "--sizes", "10,3,3"]) == 0
    assert [c[0] for c in calls] == ["collect", "collect", "collect", "fit", "evaluate"]
    test = calls[1]
    assert "--loo" in test and test[test.index("--subsets") + 1] == "64" and test[test.index("--n") + 1] == "3"
    ev = calls[-1]
    for flag in ("--train", "--seeds", "--resamples", "--contextcite-validation", "--sizes"):
        assert flag in ev
    res = json.loads(out.read_text())
    assert res["methods"]["estimator"]["lds"]["value"] == 0.5  # the evaluate layout is kept
    assert res["bench"]["mode"] == "quick+custom" and set(res["bench"]["stages"]) == {
        "collect_train",
        "collect_test",
        "collect_validation",
        "fit",
        "evaluate",
    }
    monkeypatch.setattr(attrib.cli, "main", lambda args: 2)
    with pytest.raises(SystemExit, match="collect_train failed"):
        bench.main(["--json", str(out), "--work", str(tmp_path / "w2")])
