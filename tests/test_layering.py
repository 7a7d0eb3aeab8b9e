"""The layering, enforced: the checks fail on violations (shown on planted ones), and the tree passes them.

import-linter's contracts (``[tool.importlinter]`` in pyproject.toml, run by
``make lint``) forbid the core from importing the benchmark, the research
variants or the CLI, and ``estimators``/``metrics`` from importing ``attrib``.
These tests add what its contracts do not say: no import cycle between any two
modules, and no private name imported across modules.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("attrib", "estimators", "metrics")
CORE = (
    "attrib.io",
    "attrib.plugins",
    "attrib.models",
    "attrib.regions",
    "attrib.capture",
    "attrib.ablation",
    "attrib.variants.registry",
    "attrib.variants.base",
    "attrib.collect",
    "attrib.evaluation",
    "attrib.streaming",
    "attrib.analysis",
    "attrib.plots",
)
OUTSIDE_CORE = ("attrib.shapes", "attrib.variants.pointcopy", "attrib.variants.latent", "attrib.cli")


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.find_modules_directly_imported_by(v)):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return out


def private_imports(root: Path, packages: Iterable[str]) -> list[str]:
    """``from pkg.mod import _name`` across modules of ``packages`` (dunders and ``__future__`` allowed)."""
    bad = []
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            tree = ast.parse(f.read_text(), str(f))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in packages:
                    for alias in node.names:
                        if alias.name.startswith("_") and not alias.name.startswith("__"):
                            bad.append(f"{f.relative_to(root)}:{node.lineno} imports {node.module}.{alias.name}")
                if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                    base = node.value
                    if isinstance(base, ast.Name) and base.id in packages:
                        bad.append(f"{f.relative_to(root)}:{node.lineno} uses {base.id}.{node.attr}")
    return bad


def forbidden_imports(graph: grimp.ImportGraph, sources: Iterable[str], forbidden: Iterable[str]) -> list[str]:
    """Import chains from any module under ``sources`` to any module under ``forbidden``."""
    found = []
    for s in sources:
        for f in forbidden:
            if s in graph.modules and f in graph.modules:
                chains = graph.find_shortest_chains(importer=s, imported=f, as_packages=True)
                found += [" -> ".join(c) for c in sorted(chains)]
    return found


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    assert import_cycles(graph) == []


def test_no_private_names_imported_across_modules() -> None:
    assert private_imports(ROOT, PACKAGES) == []


def test_the_core_knows_nothing_of_the_benchmark_variants_or_cli(graph: grimp.ImportGraph) -> None:
    assert forbidden_imports(graph, CORE, OUTSIDE_CORE) == []
    assert forbidden_imports(graph, ("estimators", "metrics"), ("attrib",)) == []
    assert forbidden_imports(graph, ("attrib.variants.pointcopy",), ("attrib.variants.latent", "attrib.shapes")) == []
    assert forbidden_imports(graph, ("attrib.variants.latent",), ("attrib.variants.pointcopy", "attrib.shapes")) == []


def test_import_linter_contracts_hold() -> None:
    exe = Path(sys.executable).parent / "lint-imports"
    r = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def _package(tmp: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        p = tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))


def test_the_checks_catch_planted_violations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cycle, a private import and a forbidden import, planted in a throwaway package, are each found."""
    _package(
        tmp_path,
        {
            "plantpkg/__init__.py": "",
            "plantpkg/core/__init__.py": "",
            "plantpkg/core/a.py": "from plantpkg.core.b import thing\n",
            "plantpkg/core/b.py": "def thing():\n    from plantpkg.core import a\n    return a\n",
            "plantpkg/core/c.py": "from plantpkg.core.a import _hidden\nfrom plantpkg.bench.d import x\n",
            "plantpkg/bench/__init__.py": "",
            "plantpkg/bench/d.py": "x = 1\n",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    g = grimp.build_graph("plantpkg")
    assert import_cycles(g) == [["plantpkg.core.a", "plantpkg.core.b"]]
    assert private_imports(tmp_path, ("plantpkg",)) == ["plantpkg/core/c.py:1 imports plantpkg.core.a._hidden"]
    assert forbidden_imports(g, ("plantpkg.core",), ("plantpkg.bench",)) == ["plantpkg.core.c -> plantpkg.bench.d"]
    # and the tree's own contracts catch a core module that imports the benchmark
    copy = tmp_path / "tree"
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, copy / pkg, ignore=shutil.ignore_patterns("bundled", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    (copy / "attrib" / "evaluation.py").write_text(
        (copy / "attrib" / "evaluation.py").read_text() + "\nfrom attrib.shapes import make_example  # planted\n"
    )
    exe = Path(sys.executable).parent / "lint-imports"
    env = {"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([str(exe), "--no-cache"], cwd=copy, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode != 0 and "attrib.evaluation -> attrib.shapes" in r.stdout, r.stdout + r.stderr
