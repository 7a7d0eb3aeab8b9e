"""Benchmark v2 through the toolkit: evaluation metrics, the ``shapes2:`` dataset kind, training and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import attrib.shapes.evaluate as evaluate_mod
from attrib.cli import main
from attrib.shapes.evaluate import evaluate
from attrib.shapes.v2 import make_example
from attrib.shapes.v2.dataset import sentence_kind


def _outputs(examples: list[Any], blank: bool) -> list[str]:
    if blank:
        return ["<think> I need to look.</think> The answer is 0."] * len(examples)
    out = []
    for k, ex in enumerate(examples):
        text = ex.target_text()
        if k == 1:  # a hallucination: the first object named with a colour the scene lacks for it
            o = ex.scene.objects[0]
            wrong = next(c for c in ("red", "green", "blue", "yellow", "purple", "orange") if c != o.colour)
            text = text.replace(f"A {o.describe()} at", f"A {o.size} {wrong} {o.shape} at", 1)
            absent = all(x.describe() != f"{o.size} {wrong} {o.shape}" for x in ex.scene.objects)
            text = text.replace(f"The answer is {ex.answer}.", "The answer is zzz.") if absent else text
        if k == 2:  # a reasoning error: every object real, position words swapped, wrong answer
            text = text.replace(f"The answer is {ex.answer}.", "The answer is zzz.")
        if k == 3:
            text = "<think> I need to"  # unparsed
        out.append(text)
    return out


def test_eval_reports_grounding_chain_length_and_failure_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    examples = [make_example("test", i) for i in range(10)]
    calls: list[bool] = []

    def fake_generate(model: Any, processor: Any, images: Any, questions: Any, *a: Any, **k: Any) -> list[Any]:
        blank = bool(calls)  # one batch of real images, then one of blanks
        calls.append(blank)
        chunk = [e for e in examples if e.question.text in questions][: len(questions)]
        return [(o, []) for o in _outputs(chunk, blank)]

    monkeypatch.setattr(evaluate_mod, "_generate", fake_generate)
    res = evaluate(object(), None, examples=examples, batch_size=10, benchmark="shapes2")  # type: ignore[arg-type]
    d = res.to_dict()
    for key in ("accuracy", "blank_image_accuracy", "parse_rate", "n", "n_failures", "per_family"):
        assert key in d
    assert d["n"] == 10 and d["accuracy"] == pytest.approx(0.7) and d["parse_rate"] == pytest.approx(0.9)
    assert d["n_failures"] == 3 and d["failure_kinds"] == {"hallucination": 1, "reasoning_error": 2}
    assert d["blank_image_accuracy"] < d["accuracy"]
    ref = sorted(len(e.question.sentences) for e in examples)
    assert d["reference_chain_length_median"] == float(np.median(ref))
    assert d["object_accuracy"] < 1 and d["object_mentions"] > 50
    assert d["position_accuracy"] == 1.0  # the wrong-coloured object is absent, so its position is not scored
    for fam, r in d["per_family"].items():
        assert {"n", "accuracy", "blank_image_accuracy", "chain_length_median", "position_accuracy"} <= set(r), fam
    assert res.outcomes[0].grounding is not None and res.outcomes[0].failure_kind is None
    assert json.loads(json.dumps(res.to_dict(with_outcomes=True)))["outcomes"][1]["grounding"]["mentions"] > 0


def test_shapes2_dataset_kind_truth_meta_and_failure_kind() -> None:
    from attrib.collect.datasets import open_dataset

    ds = open_dataset("shapes2:validation")
    items = list(ds.items(3, start=5))
    ex = make_example("validation", 5)
    item = items[0]
    assert item.uid == "validation-5" and item.question == ex.question.text and item.answer == ex.answer
    assert item.meta["benchmark"] == "shapes2" and item.meta["family"] == ex.family
    assert [s["kind"] for s in item.meta["sentences"]] == [sentence_kind(s) for s in ex.question.sentences]
    assert item.truth is not None
    for s in ex.question.sentences:
        mask = item.truth(s.text)
        expected = np.zeros((ex.scene.height, ex.scene.width), dtype=bool)
        for i in s.objects:
            expected |= ex.scene.mask(i)
        assert mask is not None and np.array_equal(mask, expected), s.text
    o = ex.scene.objects[0]
    moved = f"A {o.describe()} at the center."  # a generated sentence not in the reference still finds its object
    assert np.array_equal(item.truth(moved), ex.scene.mask(0))  # type: ignore[arg-type]
    assert item.truth("A large plaid circle at the top.") is None and item.truth("Something else.") is None
    assert np.array_equal(np.asarray(ds.image_for({"uid": "validation-5"})), ex.image_array())
    rec = {"uid": "validation-5", "question": ex.question.text, "output": ex.target_text()}
    assert ds.failure_kind(rec) == "reasoning_error"
    absent = next(
        f"{s} {c} {sh}"
        for s in ("small", "large")
        for c in ("red", "green", "blue", "yellow", "purple", "orange")
        for sh in ("circle", "square", "triangle")
        if all(x.describe() != f"{s} {c} {sh}" for x in ex.scene.objects)
    )
    assert (
        ds.failure_kind({**rec, "output": f"<think> A {absent} at the top.</think> The answer is no."})
        == "hallucination"
    )
    assert ds.failure_kind({**rec, "question": "Something else?"}) is None
    assert ds.judge(ex.target_text(), ex.answer) == (ex.answer, True)
    assert next(open_dataset("shapes:test").items(1)).uid == "test-0"  # v1 stays loadable


def test_v2_training_config_and_tiny_run(tmp_path: Path) -> None:
    from attrib.shapes.model import ModelSize, load_model
    from attrib.shapes.train import V2_CANVAS_CYCLE, TrainConfig, step_canvas, step_difficulty, step_examples, train

    cfg = TrainConfig.v2()
    assert cfg.size.layers * cfg.size.heads >= 48 and cfg.benchmark == "shapes2" and cfg.aux_share == 0
    assert cfg.to_dict()["benchmark_version"] == 1
    with pytest.raises(ValueError, match="auxiliary"):
        TrainConfig(benchmark="shapes2", aux_share=0.25)
    with pytest.raises(ValueError, match="benchmark must be"):
        TrainConfig(benchmark="shapes3")
    small = TrainConfig.v2(
        steps=5, batch_size=2, size=ModelSize.tiny(), ckpt_every=0, warmup=1, compile=False, workers=0, curriculum=0
    )
    assert [step_canvas(small, s) for s in range(5)] == list(V2_CANVAS_CYCLE)
    exs = step_examples(small, 4)
    assert [(e.scene.width, e.scene.height) for e in exs] == [(448, 448)] * 2 and exs[0].uid == "train-8"
    # the curriculum: 224x224 scenes of few objects first, then the canvas mix from the start of its cycle
    cur = TrainConfig.v2(steps=8, batch_size=3, curriculum=2, curriculum_min_objects=2, curriculum_max_objects=3)
    assert [step_canvas(cur, s) for s in range(7)] == [(224, 224)] * 2 + list(V2_CANVAS_CYCLE)
    assert all(2 <= len(e.scene.objects) <= 3 and e.scene.width == 224 for s in (0, 1) for e in step_examples(cur, s))
    assert step_difficulty(cur, 2) == cur.difficulty and step_difficulty(cur, 1).max_objects == 3
    assert [e.uid for e in step_examples(cur, 2)] == ["train-6", "train-7", "train-8"]
    with pytest.raises(ValueError, match="curriculum"):
        TrainConfig.v2(curriculum_min_objects=4, curriculum_max_objects=3)
    with pytest.raises(ValueError, match="benchmark v2 recipe only"):
        TrainConfig(curriculum=10)
    res = train(small, tmp_path / "m")
    assert res.losses[-1][1] < res.losses[0][1]
    _model, proc = load_model(tmp_path / "m")
    text = make_example("test", 0).target_text()
    assert proc.tokenizer.unk_token_id not in proc.tokenizer.encode(text)
    log = json.loads((tmp_path / "m" / "train_log.json").read_text())
    assert log["config"]["benchmark"] == "shapes2"
    # its directory records its benchmark's held-out split, the default examples when it is loaded by path
    assert json.loads((tmp_path / "m" / "attrib_processor.json").read_text())["dataset"] == "shapes2:test"
    out = tmp_path / "eval.json"
    # no --benchmark: the one the model was trained on, read from its train_log.json
    assert main(["shapes", "eval", "--model", str(tmp_path / "m"), "--n", "2", "--no-blank", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["benchmark"] == "shapes2" and d["n"] == 2 and "chain_length_median" in d and "position_accuracy" in d
    assert set(d["per_family"]) <= {"count", "compare", "most", "hop", "find"}
    assert all("chain_length_median" in r and "accuracy" in r for r in d["per_family"].values())
    # a v2 model cannot read v1's words: refused in one line, not scored on prompts full of <unk>
    assert main(["shapes", "eval", "--benchmark", "shapes", "--model", str(tmp_path / "m"), "--n", "2"]) == 2


def test_cli_generate_shapes2(tmp_path: Path) -> None:
    assert main(["shapes", "generate", "--benchmark", "shapes2", "--n", "3", "--out", str(tmp_path)]) == 0
    recs = [json.loads(x) for x in (tmp_path / "examples.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and all(r["benchmark"] == "shapes2" for r in recs)
    assert recs[0]["sentences"][0]["kind"] == "planning" and (tmp_path / recs[0]["image"]).is_file()
    assert (
        main(["shapes", "generate", "--benchmark", "shapes2", "--n", "1", "--width", "448", "--out", str(tmp_path)])
        == 2
    )


def test_v2_training_is_deterministic_and_resumes(tmp_path: Path) -> None:
    from attrib.shapes.model import ModelSize
    from attrib.shapes.train import TrainConfig, train

    def cfg() -> TrainConfig:
        return TrainConfig.v2(
            steps=7, batch_size=2, size=ModelSize.tiny(), ckpt_every=2, warmup=1, compile=False, workers=0, curriculum=2
        )

    train(cfg(), tmp_path / "a")

    class BoomError(RuntimeError):
        pass

    def die(step: int, total: int, loss: float) -> None:
        if step == 3:
            raise BoomError

    with pytest.raises(BoomError):
        train(cfg(), tmp_path / "b", on_step=die)
    assert train(cfg(), tmp_path / "b").resumed_from == 2
    la = json.loads((tmp_path / "a" / "train_log.json").read_text())
    lb = json.loads((tmp_path / "b" / "train_log.json").read_text())
    assert la["final_digest"] == lb["final_digest"] and la["checkpoint_digests"] == lb["checkpoint_digests"]
    assert set(la["step_seconds"]) == {"224x224-curriculum", "224x224", "448x280", "280x448", "448x448"}


def test_eval_refuses_a_vocabulary_without_the_benchmark_words() -> None:
    from attrib.shapes.dataset import iter_split as iter_split1
    from attrib.shapes.model import bundled_model_path
    from attrib.shapes.processor import ShapesProcessor

    v1 = ShapesProcessor.from_pretrained(bundled_model_path("shapes-qwen25vl"))  # trained on benchmark v1
    with pytest.raises(ValueError, match=r"lacks words of benchmark 'shapes2'.*--benchmark shapes"):
        evaluate(object(), v1, examples=[make_example("test", i) for i in range(5)], benchmark="shapes2")  # type: ignore[arg-type]
    evaluate_mod._check_vocabulary(v1, list(iter_split1("test", 20)), "shapes")  # its own benchmark passes


def test_v2_model_size_heads_and_class() -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    from attrib.shapes.train import TrainConfig, new_model

    model, processor = new_model(TrainConfig.v2())
    assert type(model) is Qwen2_5_VLForConditionalGeneration and model.model.visual is not None
    text = model.config.text_config
    assert text.num_hidden_layers * text.num_attention_heads >= 48
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert n_bytes <= 50e6, n_bytes  # the bundled-size budget, float32 weights
    words = make_example("test", 3).target_text()
    assert processor.tokenizer.unk_token_id not in processor.tokenizer.encode(words)
