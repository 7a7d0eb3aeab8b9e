"""Benchmark v2 of ``attrib.shapes`` (the ``shapes2:<split>`` dataset kind): long traces grounded in the image.

Scenes on larger and non-square canvases with more objects ([`attrib.shapes.v2.scene`][attrib.shapes.v2.scene]),
five families whose traces scan the objects in reading order and name each one with its size, colour,
shape and position, a kind for every sentence ([`attrib.shapes.v2.families`][attrib.shapes.v2.families]),
deterministic splits ([`attrib.shapes.v2.dataset`][attrib.shapes.v2.dataset]) and the grounding checks of
generated traces ([`attrib.shapes.v2.grounding`][attrib.shapes.v2.grounding]). v1 (``shapes:<split>``) is
unchanged.
"""

from attrib.shapes.v2.dataset import BENCHMARK, BENCHMARK_VERSION, Example2, iter_split, make_example
from attrib.shapes.v2.families import FAMILIES, LONG_FAMILIES, MAX_SENTENCES, SENTENCE_KINDS, KindSentence
from attrib.shapes.v2.scene import CANVASES, preset

__all__ = [
    "BENCHMARK",
    "BENCHMARK_VERSION",
    "CANVASES",
    "FAMILIES",
    "LONG_FAMILIES",
    "MAX_SENTENCES",
    "SENTENCE_KINDS",
    "Example2",
    "KindSentence",
    "iter_split",
    "make_example",
    "preset",
]
