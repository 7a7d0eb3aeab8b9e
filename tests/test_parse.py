"""Output parsing."""

from __future__ import annotations

from attrib.shapes import iter_split, parse_output
from attrib.shapes.parse import split_sentences


def test_parses_ground_truth_traces() -> None:
    for ex in iter_split("test", 50):
        p = parse_output(ex.target_text())
        assert p.ok and p.answer == ex.answer
        assert p.sentences == [s.text for s in ex.question.sentences]


def test_broken_outputs() -> None:
    assert parse_output("There is a red circle.").error == "no <think>...</think> block"
    assert parse_output("<think> </think> The answer is 2.").error == "empty think block"
    p = parse_output("<think> There is a red circle.</think> The answer is")
    assert not p.ok and p.error == "no final answer" and p.sentences == ["There is a red circle."]
    p = parse_output("<think> A. B.</think> The answer is 3. extra")
    assert not p.ok


def test_split_sentences_drops_fragment() -> None:
    assert split_sentences("One. Two? Three") == ["One.", "Two?"]
