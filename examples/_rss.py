"""Peak-RSS helpers shared by the memory parts of ``bench_capture.py`` and ``bench_streaming.py`` (Linux)."""

from __future__ import annotations

from pathlib import Path


def status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak_rss() -> float:
    """Reset the process's peak RSS to its current RSS (Linux ``clear_refs``); returns the current RSS in MB."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_mb("VmRSS")
