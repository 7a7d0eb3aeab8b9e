"""The peak-RSS helpers that the capture and streaming benchmarks share (examples/_rss.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_reset_peak_rss_then_peak_follows_a_new_allocation() -> None:
    spec = importlib.util.spec_from_file_location("_rss", ROOT / "examples" / "_rss.py")
    assert spec is not None and spec.loader is not None
    rss = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rss)
    before = rss.reset_peak_rss()
    assert before > 0 and rss.status_mb("VmHWM") <= before + 5  # the peak was brought down to the current RSS
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MB, touched
    assert rss.status_mb("VmHWM") >= before + 50
    del block
    with pytest.raises(KeyError):
        rss.status_mb("NoSuchField")
