"""The command line as a whole: every option documented, a version, one-line errors."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from attrib import __version__
from attrib.cli import build_parser, main


def _parsers(p: argparse.ArgumentParser, path: str = "attrib") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # aliases share a parser
                    seen.add(id(sub))
                    yield from _parsers(sub, f"{path} {name}")


def test_every_option_and_command_has_help_text() -> None:
    missing = []
    n_options = 0
    for path, p in _parsers(build_parser()):
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                missing += [f"{path} {name}" for name, h in helps.items() if not h]
                continue
            n_options += 1
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert n_options > 150
    assert missing == []


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"attrib {__version__}"


def test_the_v1_command_is_an_alias_of_pointcopy() -> None:
    p = build_parser()
    a = p.parse_args(["v1", "--base-test", "a", "--v1-test", "b"])
    b = p.parse_args(["pointcopy", "--base-test", "a", "--v1-test", "b"])
    assert a.fn is b.fn


def test_bad_input_is_one_line_and_refused_before_work(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["shapes", "generate", "--n", "-3", "--out", "/tmp/never-written"]) == 2
    err = capsys.readouterr().err
    assert "--n must be at least 1, got -3" in err and len(err.strip().splitlines()) == 1
    assert main(["evaluate", "--test", "/nonexistent", "--estimator", "x"]) == 2
    assert "no collection at /nonexistent" in capsys.readouterr().err
