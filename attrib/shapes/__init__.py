"""``attrib.shapes``: a procedurally generated grounded-reasoning benchmark.

Scenes of 3-10 coloured shapes, five question families, a reasoning trace of
2-12 sentences per question, and pixel-level ground truth for every object that
every sentence names. See [`attrib.shapes.scene`][attrib.shapes.scene],
[`attrib.shapes.questions`][attrib.shapes.questions] and [`attrib.shapes.dataset`][attrib.shapes.dataset].
Benchmark v2 (``shapes2:<split>``: larger canvases, long traces that scan the image, a kind per sentence)
lives in [`attrib.shapes.v2`][attrib.shapes.v2]; v1 (``shapes:<split>``) is unchanged.
"""

from attrib.shapes.dataset import SPLITS, Example, example_seed, iter_split, make_example, trace_text
from attrib.shapes.parse import ParsedTrace, parse_output
from attrib.shapes.questions import FAMILIES, Question, Sentence
from attrib.shapes.scene import Difficulty, Scene, ShapeObject

__all__ = [
    "FAMILIES",
    "SPLITS",
    "Difficulty",
    "Example",
    "ParsedTrace",
    "Question",
    "Scene",
    "Sentence",
    "ShapeObject",
    "example_seed",
    "iter_split",
    "make_example",
    "parse_output",
    "trace_text",
]
