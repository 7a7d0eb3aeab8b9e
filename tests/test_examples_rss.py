"""The peak-RSS helpers that the capture and streaming benchmarks share (examples/_rss.py)."""

from __future__ import annotations

import gc
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
    gc.collect()  # garbage of earlier tests freed now, not between the reset and the allocation
    before = rss.reset_peak_rss()
    assert before > 0 and rss.status_mb("VmHWM") <= before + 5  # the peak was brought down to the current RSS
    # The RSS just before allocating: memory another thread frees after the reset lowers it, and the new
    # block must then lift the peak above that level, not above the reset's.
    level = min(before, rss.status_mb("VmRSS"))
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MB, touched
    assert rss.status_mb("VmHWM") >= level + 50
    del block
    with pytest.raises(KeyError):
        rss.status_mb("NoSuchField")
