"""Shared fixtures (seeding, small builders), and a loud line when the browser tests did not run.

Nothing here downloads anything.
"""

from __future__ import annotations

import os
import random
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest_plugins = ["pytester"]  # tests/test_train_resume.py checks the browser hooks below in a nested session

BROWSER_TESTS = "test_browser.py"
_BROWSER_SKIPS = pytest.StashKey[list[str]]()


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shapes_processor():  # type: ignore[no-untyped-def]
    from attrib.shapes.processor import ShapesProcessor
    from attrib.shapes.vocab import benchmark_words

    return ShapesProcessor.create(benchmark_words(300))


@pytest.fixture(scope="session")
def bundled_path() -> Path:
    """The first bundled model (benchmark v1, 4 layers x 6 heads): small and fast, for tests of mechanics on
    ``shapes:`` examples. Tests of the default model name it (``shapes2-qwen25vl``)."""
    from attrib.shapes.model import bundled_model_path

    return bundled_model_path("shapes-qwen25vl")


# The browser tests (tests/test_browser.py) skip when selenium, chromium or chromedriver is missing.
# That must not pass unnoticed: the hooks below print one loud line at the end of the run, and with
# ATTRIB_REQUIRE_BROWSER=1 turn each such skip into a failure.


def _require_browser() -> bool:
    return os.environ.get("ATTRIB_REQUIRE_BROWSER", "") == "1"


def _is_browser_test(nodeid: str) -> bool:
    return nodeid.split("::")[0].replace("\\", "/").rsplit("/", 1)[-1] == BROWSER_TESTS


def _note_browser_skip(config: pytest.Config, report: pytest.CollectReport | pytest.TestReport) -> None:
    """Record a skipped browser test (or module); with ``ATTRIB_REQUIRE_BROWSER=1``, fail it instead."""
    if not (report.skipped and not hasattr(report, "wasxfail") and _is_browser_test(report.nodeid)):
        return
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    config.stash.setdefault(_BROWSER_SKIPS, []).append(reason)
    if _require_browser():
        report.outcome = "failed"
        report.longrepr = f"ATTRIB_REQUIRE_BROWSER=1, but this browser test was skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    """A module-level skip of tests/test_browser.py (``importorskip``) is noted like a test's skip."""
    outcome = yield
    _note_browser_skip(collector.config, outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """A skipped browser test is noted (the skip marks and fixtures of tests/test_browser.py are untouched)."""
    outcome = yield
    _note_browser_skip(item.config, outcome.get_result())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> Generator[None, Any, Any]:
    """Print one loud line when any test of tests/test_browser.py was skipped.

    Browser tests skip when selenium, chromium or chromedriver is missing (see ``make browser``).
    Set ``ATTRIB_REQUIRE_BROWSER=1`` (in CI, where the browser is installed) to make every such
    skip a failure instead, so that the run fails rather than passing without them. The line comes
    last, after the short test summary (this hook wraps pytest's own).
    """
    result = yield
    skips = config.stash.get(_BROWSER_SKIPS, [])
    if not skips:
        return result
    n = len(skips)
    if _require_browser():
        what = f"{n} failed, as ATTRIB_REQUIRE_BROWSER=1"
    else:
        what = f"{n} skipped; set ATTRIB_REQUIRE_BROWSER=1 to fail"
    terminalreporter.write_sep("!", f"BROWSER TESTS DID NOT RUN: {sorted(set(skips))[0]} ({what})", red=True, bold=True)
    return result
