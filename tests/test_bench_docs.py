"""docs/benchmarks.md says what its result JSONs say (examples/bench_docs.py)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_docs", ROOT / "examples" / "bench_docs.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_published_page_matches_its_jsons() -> None:
    """Every generated block of docs/benchmarks.md equals what docs/results/*.json give."""
    bd = _bench_docs()
    page = ROOT / "docs" / "benchmarks.md"
    text = page.read_text()
    blocks = bd.render(ROOT / "docs" / "results")
    assert blocks, "no result JSON found in docs/results"
    assert bd.replace_blocks(text, bd.on_page(blocks, page)) == text
    where = bd.pages()
    for name in bd.registry():
        home = ROOT / "docs" / where.get(name, "benchmarks.md")
        assert f"<!-- {name}:start -->" in home.read_text(), f"block {name} has no place in {home}"
    # a block of another page is rebuilt there, from its JSON, and is not asked of benchmarks.md
    assert where["estimator-variants"] == "estimator.md" and "<!-- estimator-variants:start -->" not in text
    est_page = ROOT / "docs" / "estimator.md"
    est_text = est_page.read_text()
    assert set(bd.on_page(blocks, est_page)) == {"estimator-variants"}
    assert bd.replace_blocks(est_text, bd.on_page(blocks, est_page)) == est_text


def test_check_fails_on_a_hand_edited_figure(tmp_path: Path) -> None:
    bd = _bench_docs()
    page = tmp_path / "b.md"
    shutil.copy(ROOT / "docs" / "benchmarks.md", page)
    args = ["--results", str(ROOT / "docs" / "results"), "--write", str(page), "--check"]
    assert bd.main(args) == 0
    text = page.read_text()
    start = text.index("<!-- user-model:start -->")
    row = text.index("| hidden 256, 4 layers |", start)
    end = text.index("\n", row)
    page.write_text(text[:row] + "| hidden 256, 4 layers | 82 M | 1.00 | 0.100 | 9.99 | 10.0 |" + text[end:])
    assert bd.main(args) == 1
    # Writing restores the figures; the check then passes.
    assert bd.main(args[:-1]) == 0 and bd.main(args) == 0
    assert page.read_text() == text


def test_user_model_block_by_hand(tmp_path: Path) -> None:
    bd = _bench_docs()
    d = {
        "machine": "x86_64",
        "torch_threads": 2,
        "dtype": "float32",
        "generated_tokens": 10,
        "image_tokens": 4,
        "prompt_tokens": 9,
        "n_subsets": 3,
        "k": 2,
        "batch_size": 3,
        "runs": [
            {
                "name": "m",
                "params_lm": 2_500_000,
                "seconds_generation": 1.23456,
                "seconds_per_subset": 0.5,
                "seconds_per_example": 123.4,
                "seconds_per_example_with_loo": 1234.5,
                "repeats": 3,
            }
        ],
    }
    lines = bd.user_model(d)
    assert "| m | 2 M | 1.23 | 0.5 | 123 | 1,234 |" in lines  # 3 significant figures, then whole seconds
    assert "medians of 3 repeats" in lines[0] and "K = 2 regions" in lines[0]
    (tmp_path / "bench_user_model.json").write_text(json.dumps(d))
    page = tmp_path / "p.md"
    page.write_text("a\n<!-- user-model:start -->\nold\n<!-- user-model:end -->\nb\n")
    assert bd.main(["--results", str(tmp_path), "--write", str(page)]) == 0
    text = page.read_text()
    assert "old" not in text and "| m | 2 M |" in text and text.startswith("a\n") and text.endswith("b\n")


def test_a_missing_json_leaves_its_block_and_a_missing_block_is_an_error(tmp_path: Path) -> None:
    bd = _bench_docs()
    page = tmp_path / "p.md"
    page.write_text("<!-- user-model:start -->\nkept\n<!-- user-model:end -->\n")
    assert bd.main(["--results", str(tmp_path), "--write", str(page)]) == 0
    assert "kept" in page.read_text()
    with pytest.raises(ValueError, match="user-model"):
        bd.replace_blocks("no markers", {"user-model": "x\n"})


def test_a_block_from_several_jsons(tmp_path: Path) -> None:
    """A block registered with a tuple of files gets them all, by name; one missing leaves the block."""
    bd = _bench_docs()
    (tmp_path / "a.json").write_text(json.dumps({"x": 1}))
    page = tmp_path / "p.md"
    page.write_text("<!-- two:start -->\nold\n<!-- two:end -->\n")
    seen: list[dict[str, object]] = []

    def both(d: dict[str, object]) -> list[str]:
        seen.append(d)
        return [f"{d['a.json']['x']} {d['b.json']['y']}"]  # type: ignore[index]

    bd.BLOCKS["two"] = (("a.json", "b.json"), both)
    try:
        assert bd.main(["--results", str(tmp_path), "--write", str(page)]) == 0
        assert "old" in page.read_text() and not seen  # b.json missing: left as it is
        (tmp_path / "b.json").write_text(json.dumps({"y": 2}))
        assert bd.main(["--results", str(tmp_path), "--write", str(page)]) == 0
        assert page.read_text() == "<!-- two:start -->\n1 2\n<!-- two:end -->\n"
    finally:
        del bd.BLOCKS["two"]
