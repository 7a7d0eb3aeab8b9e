"""Write the generated tables of docs/benchmarks.md from the benchmarks' JSON outputs.

Usage:
    python examples/bench_docs.py [--results docs/results] [--write docs/benchmarks.md] [--check]

Each generated block sits between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` in the Markdown
file, and is rebuilt from ``RESULTS/<json>`` by the renderer registered for NAME: in ``BLOCKS`` below
and in the ``BLOCKS`` of every ``examples/tables_*.py``. The published result JSONs live in
``docs/results/`` (tracked: a benchmark writes to ``out/``, and a run worth publishing is copied
there), so a clean clone can check that the page says what its JSONs say:
``python examples/bench_docs.py --write docs/benchmarks.md --check`` (a test does).

A block drawn from several JSONs registers a tuple of file names; its renderer then gets
``{file name: that file's contents}``.

A block whose JSON is missing is left as it is (and named on stderr), so a partial run never erases
figures. Without ``--write`` the blocks are printed. ``--check`` exits 1 when a block in the file
differs from what its JSON gives (figures edited by hand, or a JSON newer than the page).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Renderer = Callable[[dict[str, Any]], list[str]]


def _s(x: float) -> str:
    """Seconds, to three significant figures."""
    return f"{x:.3g}" if x < 100 else f"{x:,.0f}"


def user_model(d: dict[str, Any]) -> list[str]:
    """The cost of one collected example on language models of growing size (bench_user_model.py)."""
    lines = [
        f"Measured: {d['machine']}, {d['torch_threads']} torch threads, {d['dtype']}; per example "
        f"{d['generated_tokens']} generated tokens, {d['prompt_tokens']} prompt tokens of which "
        f"{d['image_tokens']} image tokens, K = {d['k']} regions, {d['n_subsets']} removal sets in batches of "
        f"{d['batch_size']}; medians of {d['runs'][0]['repeats']} repeats.",
        "",
        "| language model | LM parameters | generation + capture (s) | s / removal set | s / example | "
        "s / example with leave-one-out |",
        "|---|---|---|---|---|---|",
    ]
    for r in d["runs"]:
        lines.append(
            f"| {r['name']} | {r['params_lm'] / 1e6:,.0f} M | {_s(r['seconds_generation'])} | "
            f"{_s(r['seconds_per_subset'])} | {_s(r['seconds_per_example'])} | "
            f"{_s(r['seconds_per_example_with_loo'])} |"
        )
    p = d.get("projection")
    if p:
        lines += [
            "",
            f"Projection to the {p['target']} ({p['params_lm'] / 1e9:.2f} B parameters; {p['fit']}): "
            f"{_s(p['seconds_per_example'])} s per example, {p['hours_per_1000_examples']:,.0f} hours per 1,000 "
            "examples on this CPU. A projection, not a measurement.",
        ]
    return lines


#: block name -> (JSON file under --results, or a tuple of them, renderer)
BLOCKS: dict[str, tuple[str | tuple[str, ...], Renderer]] = {
    "user-model": ("bench_user_model.json", user_model),
}


RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


def pages() -> dict[str, str]:
    """The page (file name under docs/) of every block that does not live in ``benchmarks.md``: the ``PAGES`` of
    ``examples/tables_*.py``."""
    out: dict[str, str] = {}
    for f in sorted(Path(__file__).resolve().parent.glob("tables_*.py")):
        spec = importlib.util.spec_from_file_location(f.stem, f)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        out.update(getattr(mod, "PAGES", {}))
    return out


def on_page(blocks: dict[str, str], page: Path) -> dict[str, str]:
    """The blocks that belong on ``page``: on a page that ``PAGES`` names (by file name), its blocks; on any
    other page (docs/benchmarks.md, or a copy of it), every block ``PAGES`` does not send elsewhere."""
    where = pages()
    if page.name in set(where.values()):
        return {n: b for n, b in blocks.items() if where.get(n) == page.name}
    return {n: b for n, b in blocks.items() if n not in where}


def registry() -> dict[str, tuple[str | tuple[str, ...], Renderer]]:
    """Every block: this module's and those of ``examples/tables_*.py``.

    Raises:
        ValueError: If two modules register the same block name.
    """
    blocks = dict(BLOCKS)
    for f in sorted(Path(__file__).resolve().parent.glob("tables_*.py")):
        spec = importlib.util.spec_from_file_location(f.stem, f)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        for name, entry in getattr(mod, "BLOCKS", {}).items():
            if name in blocks:
                raise ValueError(f"block {name!r} registered twice ({f.name})")
            blocks[name] = entry
    return blocks


def render(out: Path) -> dict[str, str]:
    """The blocks whose JSON exists, rendered."""
    done: dict[str, str] = {}
    for name, (fname, fn) in registry().items():
        names = (fname,) if isinstance(fname, str) else fname
        missing = [out / f for f in names if not (out / f).is_file()]
        if missing:
            print(f"bench_docs: {', '.join(map(str, missing))} missing; block {name!r} left as it is", file=sys.stderr)
            continue
        data = {f: json.loads((out / f).read_text()) for f in names}
        done[name] = "\n".join(fn(data[fname] if isinstance(fname, str) else data)) + "\n"
    return done


def replace_blocks(text: str, blocks: dict[str, str]) -> str:
    """``text`` with each named block's content replaced.

    Raises:
        ValueError: If a block's markers are missing from ``text``.
    """
    for name, body in blocks.items():
        pat = re.compile(rf"(<!-- {re.escape(name)}:start -->\n)(.*?)(<!-- {re.escape(name)}:end -->)", re.S)
        if not pat.search(text):
            raise ValueError(f"no '<!-- {name}:start -->' ... '<!-- {name}:end -->' block in the page")
        text = pat.sub(lambda m, body=body: m.group(1) + body + m.group(3), text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder of the published result JSONs")
    ap.add_argument("--write", type=Path, default=None, help="Markdown file whose blocks are replaced")
    ap.add_argument("--check", action="store_true", help="exit 1 if the file's blocks differ from the JSONs")
    a = ap.parse_args(argv)
    blocks = render(a.results)
    if a.write is not None:
        blocks = on_page(blocks, a.write)
    if a.write is None:
        for name, body in blocks.items():
            print(f"<!-- {name} -->\n{body}")
        return 0
    old = a.write.read_text()
    try:
        new = replace_blocks(old, blocks)
    except ValueError as e:
        print(f"error: {a.write}: {e}", file=sys.stderr)
        return 2
    if a.check:
        if new != old:
            print(f"{a.write}: generated blocks differ from {a.results}/*.json", file=sys.stderr)
            return 1
        return 0
    if new != old:
        tmp = a.write.with_suffix(a.write.suffix + ".tmp")
        tmp.write_text(new)
        tmp.replace(a.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
