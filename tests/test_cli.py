"""The command line as a whole: every option documented, a version, one-line errors."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

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


def _one_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``argv``; it must exit 2 with exactly one ``error:`` line and nothing else on stderr."""
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_configuration_errors_name_the_problem_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never"
    # collect: an unknown region method, or DINOv3 regions without a DINOv3 model: refused, nothing written
    msg = _one_error(capsys, ["collect", "--regions", "sam", "--n", "2", "--out", str(out)])
    assert "unknown region method 'sam'" in msg and "color" in msg
    msg = _one_error(capsys, ["collect", "--regions", "dinov3", "--n", "2", "--out", str(out)])
    assert "--dinov3" in msg
    msg = _one_error(capsys, ["collect", "--regions", "dinov3", "--dinov3", str(tmp_path), "--out", str(out)])
    assert "not a model directory" in msg and str(tmp_path) in msg
    msg = _one_error(capsys, ["collect", "--device", "cuda:3", "--n", "2", "--out", str(out)])
    assert "cuda:3" in msg
    msg = _one_error(capsys, ["collect", "--device", "tpu9", "--n", "2", "--out", str(out)])
    assert "unknown device 'tpu9'" in msg
    msg = _one_error(capsys, ["collect", "--temperature", "0.7", "--n", "2", "--out", str(out)])
    assert "--do-sample" in msg
    msg = _one_error(capsys, ["collect", "--dataset", "nope:x", "--out", str(out)])
    assert "unknown dataset kind 'nope'" in msg
    assert not out.exists()
    # a typo for the default model
    msg = _one_error(capsys, ["norms", "--model", "bundled"])
    assert "unknown model 'bundled'" in msg and "shapes-qwen25vl" in msg
    # sampling on a research variant, which decodes greedily
    msg = _one_error(capsys, ["collect", "--model", "shapes-qwen25vl-v1", "--do-sample", "--n", "1", "--out", str(out)])
    assert "decodes greedily" in msg


def test_estimator_files_that_are_not_estimators(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pickle

    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("RGB", (64, 64)).save(img)
    stem = tmp_path / "est"
    stem.with_suffix(".safetensors").write_bytes(pickle.dumps({"coef": [1.0, 2.0]}))
    stem.with_suffix(".json").write_text('{"L": 4, "H": 6, "intercept": 0.0, "params": {}}')
    argv = ["stream", "--estimator", str(stem), "--image", str(img), "--prompt", "hi"]
    msg = _one_error(capsys, argv)
    assert "not a safetensors file" in msg and "est.safetensors" in msg
    stem.with_suffix(".json").write_text("{not json")
    assert "not valid JSON" in _one_error(capsys, argv)
    stem.with_suffix(".json").write_text("[]")
    assert "not an estimator file" in _one_error(capsys, argv)
    msg = _one_error(
        capsys, ["stream", "--estimator", str(tmp_path / "missing"), "--image", str(img), "--prompt", "hi"]
    )
    assert "estimator file not found" in msg


def test_stream_and_serve_region_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("RGB", (64, 64)).save(img)
    msg = _one_error(capsys, ["stream", "--regions", "given", "--image", str(img), "--prompt", "hi"])
    assert "--regions-file" in msg
    boxes = tmp_path / "boxes.json"
    boxes.write_text('{"boxes": 1}')
    msg = _one_error(capsys, ["stream", "--regions-file", str(boxes), "--image", str(img), "--prompt", "hi"])
    assert "list of [x0, y0, x1, y1] boxes" in msg
    msg = _one_error(capsys, ["serve", "--regions", "given"])
    assert "uploaded images carry no regions" in msg
