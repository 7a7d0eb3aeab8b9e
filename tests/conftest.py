"""Shared fixtures: seeding and small builders. Nothing here downloads anything."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch


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
    from attrib.shapes.model import bundled_model_path

    return bundled_model_path()
