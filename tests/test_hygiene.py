"""Source hygiene of the library packages (``attrib``, ``estimators``, ``metrics``).

The checker parses every library module with ``ast`` and reports:

1. **Global matplotlib state**: a call of ``matplotlib.use(...)`` (under any alias,
   or ``use`` imported from matplotlib). Library code must not pick a backend
   for its caller; it draws on ``Figure`` objects instead.
2. **Hand-written bootstrap loops**, recognised by three rules. Resampling belongs
   to [`metrics.stats`][metrics.stats] (built on ``scipy.stats.bootstrap``), which is
   exempt from rules b and c:

   a. *A loop over resamples*: a ``range(...)`` call whose arguments mention a
      name or attribute called ``n_boot``, ``n_bootstrap`` or ``n_resamples``
      (``for _ in range(n_boot)``, ``[... for _ in range(self.n_boot)]``).
   b. *An n-out-of-n draw with replacement*, the defining step of a bootstrap:
      ``.choice(pop, size)`` whose size mentions the population's own size
      (``pop``, ``len(pop)``, ``pop.size``, ``pop.shape[0]``), unless
      ``replace=False``; or ``.integers``/``.randint(low, high, size)`` whose
      size mentions ``high`` (``rng.integers(0, n, size=(n_boot, n))``). This
      catches loops with a literal count (``range(1000)``) and vectorised
      resampling matrices, while draws of a different size (a random subset,
      one random index) pass.
   c. *Randomness in bootstrap code*: a function with an ``n_boot``/``n_resamples``
      parameter that itself creates or uses a NumPy random generator
      (``default_rng``, ``RandomState``, ``np.random.*``, ``.integers``, ``.choice``):
      such a function must hand its resampling (and its seed) to ``metrics.stats``.

The rules are checked on planted violations (each must be caught) and on legitimate
randomness (each must pass), then on the whole tree.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("attrib", "estimators", "metrics")
#: Where resampling is implemented; exempt from rules 2b and 2c.
RESAMPLING_HOME = "metrics/stats.py"
_RESAMPLE_COUNTS = {"n_boot", "n_bootstrap", "n_resamples"}


def _mentions_count(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id in _RESAMPLE_COUNTS:
            return True
        if isinstance(sub, ast.Attribute) and sub.attr in _RESAMPLE_COUNTS:
            return True
    return False


def _contains(expr: ast.AST, spellings: set[str]) -> bool:
    return any(ast.unparse(sub) in spellings for sub in ast.walk(expr))


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _n_out_of_n(call: ast.Call) -> bool:
    """Rule 2b on one call."""
    if not isinstance(call.func, ast.Attribute):
        return False
    attr = call.func.attr
    if attr == "choice":
        replace = _kw(call, "replace")
        if isinstance(replace, ast.Constant) and replace.value is False:
            return False
        if not call.args:
            return False
        pop = ast.unparse(call.args[0])
        size = _kw(call, "size") or (call.args[1] if len(call.args) > 1 else None)
        spellings = {pop, f"len({pop})", f"{pop}.size", f"{pop}.shape[0]"}
        return size is not None and _contains(size, spellings)
    if attr in ("integers", "randint"):
        high = _kw(call, "high") or (call.args[1] if len(call.args) > 1 else (call.args[0] if call.args else None))
        size = _kw(call, "size") or (call.args[2] if len(call.args) > 2 else None)
        return high is not None and size is not None and _contains(size, {ast.unparse(high)})
    return False


def _uses_numpy_rng(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.AST | None:
    """Rule 2c: the first node of ``fn`` that creates or uses a NumPy random generator."""
    for sub in ast.walk(fn):
        if isinstance(sub, ast.Attribute):
            if sub.attr in ("default_rng", "RandomState", "integers", "choice"):
                return sub
            if sub.attr == "random" and isinstance(sub.value, ast.Name) and sub.value.id in ("np", "numpy"):
                return sub
        if isinstance(sub, ast.Name) and sub.id in ("default_rng", "RandomState"):
            return sub
    return None


def check_source(source: str, path: str = "<string>") -> list[str]:
    """Hygiene violations of one module's source, as ``"path:line: rule: message"``."""
    tree = ast.parse(source)
    out: list[str] = []
    resampling_home = path.replace("\\", "/").endswith(RESAMPLING_HOME)
    mpl_names = {"matplotlib"}
    use_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mpl_names |= {a.asname for a in node.names if a.name == "matplotlib" and a.asname}
        elif isinstance(node, ast.ImportFrom) and node.module == "matplotlib":
            use_names |= {a.asname or a.name for a in node.names if a.name == "use"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            sets_backend = isinstance(f, ast.Attribute) and f.attr == "use" and isinstance(f.value, ast.Name)
            if (sets_backend and f.value.id in mpl_names) or (isinstance(f, ast.Name) and f.id in use_names):
                out.append(f"{path}:{node.lineno}: matplotlib-use: library code sets the global matplotlib backend")
            if isinstance(f, ast.Name) and f.id == "range" and any(_mentions_count(a) for a in node.args):
                out.append(f"{path}:{node.lineno}: bootstrap-loop: a loop over resamples ({ast.unparse(node)})")
            if not resampling_home and _n_out_of_n(node):
                out.append(f"{path}:{node.lineno}: bootstrap-draw: an n-out-of-n resample ({ast.unparse(node)})")
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not resampling_home:
            a = node.args
            params = {p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)}
            if params & _RESAMPLE_COUNTS:
                hit = _uses_numpy_rng(node)
                if hit is not None:
                    line = getattr(hit, "lineno", node.lineno)
                    out.append(
                        f"{path}:{line}: bootstrap-rng: {node.name}() takes a resample count and draws its own "
                        "random numbers; resample through metrics.stats"
                    )
    return out


def _library_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


# ---------------------------------------------------------------------------- planted violations
PLANTED = {
    "matplotlib-use": "import matplotlib\nmatplotlib.use('Agg')\n",
    "matplotlib-use alias": "import matplotlib as mpl\nmpl.use('Agg')\n",
    "matplotlib-use from-import": "from matplotlib import use\nuse('Agg')\n",
    # the old late_chain_attribution: a literal count, so only the draw rule can see it
    "bootstrap-draw": (
        "import numpy as np\n"
        "def diff(a, b):\n"
        "    rng = np.random.default_rng(0)\n"
        "    return [rng.choice(b, b.size).mean() - rng.choice(a, len(a)).mean() for _ in range(1000)]\n"
    ),
    # the old faithfulness._boot: a vectorised resampling matrix
    "bootstrap-rng": (
        "import numpy as np\n"
        "def _boot(x, *, n_boot, seed):\n"
        "    rng = np.random.default_rng(seed)\n"
        "    return x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1)\n"
    ),
    # the old r2 / auc_by_progress: a Python loop over resamples
    "bootstrap-loop": (
        "def boots(stat, rng, n, n_boot):\n    return [stat(rng.integers(0, n, size=n)) for _ in range(n_boot)]\n"
    ),
    "bootstrap-loop attribute": (
        "class B:\n"
        "    def run(self, pos):\n"
        "        for _ in range(self.n_boot):\n"
        "            pos[self.rng.integers(0, pos.size, pos.size)]\n"
    ),
}


@pytest.mark.parametrize("rule", sorted(PLANTED))
def test_checker_catches_planted_violations(rule: str) -> None:
    found = check_source(PLANTED[rule])
    assert any(f": {rule.split()[0]}:" in v for v in found), found


def test_planted_draws_are_caught_by_every_rule_that_applies() -> None:
    rules = {v.split(": ")[1] for v in check_source(PLANTED["bootstrap-rng"])}
    assert rules == {"bootstrap-draw", "bootstrap-rng"}
    rules = {v.split(": ")[1] for v in check_source(PLANTED["bootstrap-loop"])}
    assert rules == {"bootstrap-loop", "bootstrap-draw", "bootstrap-rng"}


LEGITIMATE = (
    # random subsets, single indices, permutations and loops over other counts are not bootstraps
    "import numpy as np\n"
    "def f(part, kk, n, n_bins, objects, seed):\n"
    "    rng = np.random.default_rng(seed)\n"
    "    for i in range(n):\n"
    "        rng.choice(part.k, kk, replace=False)\n"
    "    o = objects[int(rng.integers(len(objects)))]\n"
    "    r = int(rng.integers(0, n - 2 + 1))\n"
    "    sub = rng.choice(len(objects), size=2, replace=False)\n"
    "    return [rng.permutation(n) for _ in range(n_bins)], o, r, sub\n"
    "def g(values, n_boot=1000, seed=0):\n"
    "    from metrics.stats import bootstrap_ci\n"
    "    return bootstrap_ci(values, n_boot=n_boot, seed=seed)\n"
    "import matplotlib.pyplot as plt\n"
    "fig = plt.figure()\n"
)


def test_checker_passes_legitimate_randomness() -> None:
    assert check_source(LEGITIMATE) == []


def test_resampling_home_is_exempt_from_the_draw_rules_only() -> None:
    src = "def f(x, rng, n_boot):\n    return x[rng.integers(0, x.size, size=(n_boot, x.size))]\n"
    assert check_source(src, path="metrics/stats.py") == []
    assert check_source(src, path="metrics/other.py")
    assert check_source("import matplotlib\nmatplotlib.use('Agg')\n", path="metrics/stats.py")


# ---------------------------------------------------------------------------- the tree
def test_library_code_is_clean() -> None:
    files = _library_files()
    assert len(files) > 20 and any(p.name == "stats.py" for p in files)
    found = [v for p in files for v in check_source(p.read_text(), str(p.relative_to(ROOT)))]
    assert found == [], "\n".join(found)
