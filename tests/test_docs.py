"""The docs cover the code: every public module has an API page, and the architecture page has its recipes."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _public_modules() -> set[str]:
    mods = set()
    for pkg in ("attrib", "estimators", "metrics"):
        for f in (ROOT / pkg).rglob("*.py"):
            rel = f.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if any(p.startswith("_") for p in parts) or "bundled" in parts:
                continue
            mods.add(".".join(parts))
    return mods


def test_every_public_module_has_an_api_page() -> None:
    documented = set()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        documented |= set(re.findall(r"^::: ([\w.]+)", page.read_text(), flags=re.M))
    assert _public_modules() - documented == set()
    assert documented - _public_modules() == set()  # no page for a module that is gone


def test_architecture_page_draws_the_layers_and_gives_the_recipes() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    for heading in ("A new model family", "A new variant", "A new region method", "A new baseline"):
        assert f"### {heading}" in text
    for layer in ("attrib.cli", "attrib.shapes", "attrib.variants.registry", "attrib.models", "attrib.io"):
        assert layer in text
    nav = (ROOT / "mkdocs.yml").read_text()
    assert "architecture.md" in nav
