"""Small I/O helpers shared by every layer: atomic writes and image loading."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["atomic_write_json", "atomic_write_text", "json_for_script", "jsonable", "load_image", "to_rgb"]


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename.

    A reader never sees a half-written file, and a failed write (full disk,
    read-only directory) leaves any previous file untouched.

    Raises:
        OSError: With the path in the message when the directory is not writable.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """[`atomic_write_text`][attrib.io.atomic_write_text] of ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert grayscale, palette, RGBA (over white) or CMYK images to RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is not a readable image (the message names it).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image file not found: {p}")
    try:
        with Image.open(p) as im:
            im.load()
            return to_rgb(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read image file {p}: {e}") from e


def jsonable(obj: Any) -> Any:
    """``obj`` as strict JSON values: NaN/inf -> ``None``, numpy -> Python, tuples -> lists, keys -> str."""
    if isinstance(obj, Mapping):
        return {(f"{k:g}" if isinstance(k, float) else str(k)): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer | int):
        return int(obj)
    if isinstance(obj, np.floating | float):
        x = float(obj)
        return x if math.isfinite(x) else None
    return obj


def json_for_script(obj: Any) -> str:
    """JSON safe to place inside an HTML ``<script>`` element.

    ``<``, ``>``, ``&`` and the JavaScript line separators are escaped, so no
    ``</script>`` or HTML comment in user text can close the element. NaN is
    refused (use [`jsonable`][attrib.io.jsonable] first).
    """
    s = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return (
        s.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )
