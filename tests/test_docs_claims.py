"""What README.md and the docs claim agrees with what is in the repository and its result JSONs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _first_paragraphs(path: Path) -> str:
    """The opening of a page: the paragraphs between its title and its first list or section."""
    body = path.read_text().split("\n", 1)[1]
    return re.split(r"\n(?:## |- )", body, maxsplit=1)[0]


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w.])\d+\.\d+", text))


def _targets() -> dict[str, float]:
    """The project's faithfulness targets, as examples/tables_results.py states them."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tables_results", ROOT / "examples" / "tables_results.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return dict(mod.TARGETS)


def _faithfulness_rows() -> dict[str, dict[str, float]]:
    """Per method, the figures of docs/benchmarks.md's faithfulness block (generated from
    docs/results/faithfulness.json, which tests/test_bench_docs.py holds it to)."""
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    block = page.split("<!-- faithfulness:start -->", 1)[1].split("<!-- faithfulness:end -->", 1)[0]
    head = next(line for line in block.splitlines() if line.startswith("| method |"))
    cols = [c.strip() for c in head.strip("|").split("|")]
    rows: dict[str, dict[str, float]] = {}
    for line in block.splitlines():
        if not line.startswith("| ") or line.startswith(("| method", "|---")):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        found = {}
        for col, cell in zip(cols[1:], cells[1:], strict=True):
            m = re.search(r"−?\d+\.\d+(?:e[-−]?\d+)?", cell.replace("*", ""))
            if m:
                found[col] = float(m.group(0).replace("−", "-"))
        rows[cells[0].replace("*", "")] = found
    return rows


def _faithfulness_figures() -> dict[str, set[str]]:
    """The figures an opening may quote (formatted as the page formats them) and the ones it must."""
    rows = _faithfulness_rows()

    def row(prefix: str) -> dict[str, float]:
        return next(v for k, v in rows.items() if k.startswith(prefix))

    allowed = {f"{t:.2f}" for t in _targets().values()}
    for r in rows.values():
        for key in ("LDS", "R² vs LOO", "top-5 drop / LOO", "pointing"):
            if key in r:
                allowed |= {f"{r[key]:.3f}", f"{r[key]:.2f}"}
    methods = ("estimator", "raw attention", "integrated gradients", "ContextCite", "leave-one-out")
    required = {f"{row(m)['LDS']:.3f}" for m in methods}
    required.add(f"{row('estimator')['top-5 drop / LOO']:.2f}")
    return {"allowed": allowed, "required": required}


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_the_opening_quotes_the_published_faithfulness_figures(page: str) -> None:
    """README's opening and the docs' front page quote the faithfulness table of docs/benchmarks.md."""
    figs = _faithfulness_figures()
    text = _first_paragraphs(ROOT / page)
    found = _numbers(text)
    missing = figs["required"] - found
    assert not missing, f"{page}: the opening does not quote {sorted(missing)} (docs/benchmarks.md, Faithfulness)"
    stray = found - figs["allowed"]
    assert not stray, f"{page}: the opening quotes {sorted(stray)}, which the faithfulness table does not give"
    assert "faithfully" not in text, f"{page}: 'faithfully' is a claim the published figures do not support"


def test_every_examples_path_named_in_the_docs_exists() -> None:
    named = set()
    for page in [*PAGES, ROOT / "Makefile"]:
        named |= set(re.findall(r"examples/[A-Za-z0-9_./-]+\.(?:py|sh)", page.read_text()))
    assert named, "no examples/ path found (the pattern is wrong)"
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, f"named in README/docs/Makefile but not in the repository: {missing}"


def test_every_example_script_is_named_somewhere() -> None:
    """No orphaned script: each examples/*.py or *.sh is named by a doc, the Makefile or another example."""
    texts = [p.read_text() for p in [*PAGES, ROOT / "Makefile", *sorted((ROOT / "examples").iterdir())] if p.is_file()]
    own = {p.name: p.read_text() for p in (ROOT / "examples").iterdir() if p.suffix in (".py", ".sh")}
    for name in own:
        if name.startswith("tables_"):
            continue  # found by examples/bench_docs.py through its glob
        others = [t for t in texts if t is not own[name]]
        assert any(f"examples/{name}" in t or f" {name}" in t for t in others), f"examples/{name} is named nowhere"


def test_the_install_page_lists_every_extra() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    page = (ROOT / "docs" / "install.md").read_text()
    rows = set(re.findall(r"^\| `([a-z0-9-]+)` \|", page, re.M))
    assert rows == set(extras), (
        f"docs/install.md extras table: missing {set(extras) - rows}, extra {rows - set(extras)}"
    )


def test_make_bench_runs_an_existing_script() -> None:
    make = (ROOT / "Makefile").read_text()
    target = make.split("\nbench:", 1)[1].split("\n\n", 1)[0]
    scripts = re.findall(r"examples/\S+\.py", target)
    assert scripts and all((ROOT / s).is_file() for s in scripts), target
