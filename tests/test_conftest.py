"""tests/conftest.py: a skipped browser test is reported loudly, and fails under ATTRIB_REQUIRE_BROWSER=1.

Checked in nested pytest sessions (subprocesses, so their ``test_browser`` module never meets the real one)
that use a copy of the real conftest.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def test_skipped_browser_tests_are_loud_and_fail_under_require_browser(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text())
    pytester.makepyfile(
        test_browser="""
        import pytest

        pytestmark = pytest.mark.skipif(True, reason="chromium/chromedriver not installed")

        def test_page():
            pass
        """,
        test_other="def test_ok():\n    pass\n",
    )
    monkeypatch.delenv("ATTRIB_REQUIRE_BROWSER", raising=False)
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    res.assert_outcomes(passed=1, skipped=1)
    assert res.ret == 0
    res.stdout.fnmatch_lines(["*BROWSER TESTS DID NOT RUN: chromium/chromedriver not installed (1 skipped;*"])

    monkeypatch.setenv("ATTRIB_REQUIRE_BROWSER", "1")
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    res.assert_outcomes(passed=1, errors=1)  # the skip happens at set-up
    assert res.ret == pytest.ExitCode.TESTS_FAILED
    res.stdout.fnmatch_lines(
        ["*ATTRIB_REQUIRE_BROWSER=1, but this browser test was skipped*", "*BROWSER TESTS DID NOT RUN*(1 failed,*"]
    )

    # A module-level skip (selenium missing: importorskip) is caught too.
    pytester.makepyfile(test_browser="import pytest\n\npytest.importorskip('no_such_module', reason='no selenium')\n")
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    res.assert_outcomes(errors=1)  # a collection error: pytest stops there
    assert res.ret == pytest.ExitCode.INTERRUPTED
    monkeypatch.delenv("ATTRIB_REQUIRE_BROWSER")
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    res.assert_outcomes(passed=1, skipped=1)
    res.stdout.fnmatch_lines(["*BROWSER TESTS DID NOT RUN: no selenium (1 skipped;*"])

    # Nothing is said when the browser tests ran.
    pytester.makepyfile(test_browser="def test_page():\n    pass\n")
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    res.assert_outcomes(passed=2)
    assert "BROWSER TESTS" not in res.stdout.str()
