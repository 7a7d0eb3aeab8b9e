"""The peak-RSS helpers that the capture and streaming benchmarks share (examples/_rss.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter, as the benchmarks run: inside the test process, memory that threads left
# by earlier tests allocate or free between the reset and the allocation moves the peak (it made this
# test fail in the full suite while it passed alone).
_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from _rss import reset_peak_rss, status_mb
before = reset_peak_rss()
after_reset = status_mb("VmHWM")
block = np.ones(64 * 1024 * 1024 // 8)  # 64 MB, touched
peak = status_mb("VmHWM")
del block
try:
    status_mb("NoSuchField")
    missing = "returned"
except KeyError:
    missing = "KeyError"
print(json.dumps({"before": before, "after_reset": after_reset, "peak": peak, "missing": missing}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_reset_peak_rss_then_peak_follows_a_new_allocation() -> None:
    # Raise the peak first, free it, then reset: the reset must bring the peak down to the current RSS.
    probe = "import numpy as np\nwarm = np.ones(128 * 1024 * 1024 // 8)\ndel warm\n" + _PROBE
    done = subprocess.run(
        [sys.executable, "-c", probe, str(ROOT / "examples")], capture_output=True, text=True, timeout=60, check=True
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["before"] > 0
    assert out["after_reset"] <= out["before"] + 5  # the 128 MB peak of the warm-up is gone
    assert out["peak"] >= out["before"] + 50  # the new 64 MB block lifts it again
    assert out["missing"] == "KeyError"
