"""The page's micrograph mode (`POST /api/scan`): one uploaded micrograph scanned as `virion scan` does.

The upload is written to a private temporary file (so it is read by `micrograph.io`, like a file on
disk: 16-bit TIFFs and their pixel size included), scanned with `micrograph.scan.scan_pixels`
under the server's model lock, and answered with the particles in micrograph pixels, the verdict,
per-class counts, one colour per class and a display PNG; the page draws the boxes itself (SVG),
so they stay sharp at any zoom.
"""

from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from virion.data.decode import DecodeError
from virion.errors import VirionError
from virion.micrograph.io import read_micrograph
from virion.micrograph.overlay import _display, class_colours, scale_bar_nm
from virion.micrograph.scan import DEFAULT_NM_PER_PX, scan_pixels

DISPLAY_MAX_SIDE = 1200  # the picture sent back is at most this many pixels on a side


def _hex(rgba) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in rgba[:3])


def _number(text, name: str, default: float, low: float, high: float) -> float:
    if text in (None, ""):
        return default
    try:
        value = float(text)
    except ValueError:
        raise VirionError(f"{name} {text!r}: expected a number") from None
    if not low <= value <= high:
        raise VirionError(f"{name} {value}: expected a number from {low:g} to {high:g}")
    return value


def scan_upload(state, name: str, data: bytes, *, nm_per_px=None, min_confidence=None, model=None) -> dict:
    """Scan one uploaded micrograph with the served classifier; JSON-ready answer for the page."""
    if not data:
        raise VirionError("no file received; choose a micrograph file")
    min_confidence = _number(min_confidence, "min_confidence", state.detector.min_confidence, 0.0, 1.0)
    stated = _number(nm_per_px, "nm_per_px", 0.0, 0.0, 1e4) or None
    model = state.check_model(model)
    safe = Path(name or "micrograph").name or "micrograph"
    with tempfile.TemporaryDirectory(prefix="virion-scan-") as tmp:
        path = Path(tmp) / safe
        path.write_bytes(data)
        try:
            mic = read_micrograph(path)
        except (DecodeError, VirionError, OSError, ValueError) as exc:
            raise VirionError(f"{safe}: not a readable micrograph ({str(exc).splitlines()[0]})") from None
    size = mic.nm_per_px or stated or DEFAULT_NM_PER_PX
    with state.lock:
        result = scan_pixels(
            state.classifier,
            mic.pixels,
            size,
            name=safe,
            model=model,
            min_confidence=min_confidence,
            class_sizes=state.class_sizes,
            detector=state.detector,
        )
    h, w = mic.pixels.shape
    step = max(1, int(np.ceil(max(h, w) / DISPLAY_MAX_SIDE)))
    buffer = io.BytesIO()
    Image.fromarray(_display(mic.pixels[::step, ::step])).save(buffer, format="PNG")
    colours = {c: _hex(rgba) for c, rgba in class_colours(list(state.class_names)).items()}
    v = result.verdict
    return {
        "name": safe,
        "width": w,
        "height": h,
        "nm_per_px": size,
        "nm_per_px_from": "file" if mic.nm_per_px else ("form" if stated else "default"),
        "scale_bar_nm": scale_bar_nm(w, size),
        "image": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"),
        "model": model,
        "min_confidence": min_confidence,
        "candidates": result.candidates,
        "detector": state.detector_text,
        "particles": result.particles,
        "verdict": {**v.row(), "description": v.describe(), "counts": v.counts},
        "colours": colours,
    }
