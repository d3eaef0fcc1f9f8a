"""Read a whole micrograph at full resolution, with its pixel size when the file states one.

`data.decode` turns any file into a small model input (resized, stretched to uint8); a micrograph
is needed as it is: every pixel, its own bit depth, and its scale in nm per pixel, because crops
and scans work in nanometres. The same safety rules apply (the header is checked before any
pixel buffer is allocated; the checks are `data.decode`'s own), and the same formats are read
(anything Pillow or tifffile decodes, recognised by content, not by extension).

What comes back:
- pixels: 2-D uint8 or uint16. 8- and 16-bit data are kept exactly; colour goes to luminance
  (ITU-R 601, alpha dropped) in the same integer type; any other type (float, 32-bit, signed) is
  mapped linearly from its finite min..max onto 0..65535 (uint16): no clipping, so dark padding
  stays the darkest value and nothing is lost to a percentile.
- nm_per_px: from the TIFF resolution tags (XResolution with ResolutionUnit inch or centimetre,
  or ImageJ's `unit=` with the resolution in pixels per unit), or from a PNG/JPEG's stated
  density; None when absent. Values outside MIN_NM_PER_PX..MAX_NM_PER_PX are read as absent:
  72, 96 or 300 dpi are display defaults written by many programs (352,778 nm per pixel at 72
  dpi), not a microscope's pixel size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# decode.py's header checks are the one definition of "too large to decode"; reused, not copied.
from virion.data.decode import (
    _TIFF_LOG,
    _TIFF_MAGIC,
    DecodeError,
    DecodeSettings,
    _check_tiff_page,
    _luminance,
    open_checked_pillow,
)

# A stated pixel size outside this range is a display default (dpi), not a microscope's scale.
MIN_NM_PER_PX = 0.005
MAX_NM_PER_PX = 500.0

_NM_PER_UNIT = {
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometre": 1.0,
    "micron": 1000.0,
    "microns": 1000.0,
    "um": 1000.0,
    "\u00b5m": 1000.0,
    "\u03bcm": 1000.0,
    "micrometer": 1000.0,
    "micrometre": 1000.0,
    "a": 0.1,
    "\u00e5": 0.1,
    "angstrom": 0.1,
    "mm": 1e6,
    "millimeter": 1e6,
    "cm": 1e7,
    "centimeter": 1e7,
    "inch": 25.4e6,
}
# TIFF ResolutionUnit: 2 inch, 3 centimetre (tifffile also knows 4 mm and 5 um, written by some tools).
_TIFF_UNIT_NM = {2: 25.4e6, 3: 1e7, 4: 1e6, 5: 1e3}


@dataclass(frozen=True)
class Micrograph:
    """A whole micrograph: its pixels as stored (2-D uint8 or uint16), its scale, and where it came from."""

    pixels: np.ndarray
    nm_per_px: float | None
    path: Path

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)


def read_micrograph(path, *, max_pixels: int = DecodeSettings().max_pixels) -> Micrograph:
    """Read `path` at full resolution; raise `data.decode.DecodeError` (file and reason) on any failure.

    `max_pixels` caps the size read from the header before decoding (the decoder's default).
    """
    path = Path(path)
    settings = DecodeSettings(size=1, max_pixels=max_pixels)
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise DecodeError(path, f"cannot read the file ({exc.strerror or exc})") from None
    if not head:
        raise DecodeError(path, "file is empty (0 bytes)")
    with _TIFF_LOG.capture():
        try:
            if head in _TIFF_MAGIC:
                pixels, nm = _read_tiff(path, settings)
            else:
                pixels, nm = _read_pillow(path, settings)
        except DecodeError:
            raise
        except MemoryError:
            raise DecodeError(path, "not enough memory to decode the image") from None
        except Exception as exc:  # any decoder failure on a bad file becomes one clear message
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DecodeError(path, f"cannot decode ({type(exc).__name__}: {reason})") from None
    return Micrograph(np.ascontiguousarray(pixels), nm, path)


def pixel_size(micrograph: Micrograph, given: float | None, assumed: float) -> tuple[float, str]:
    """A micrograph's nm per pixel and where it came from: "metadata" (the file states it), else
    "--nm-per-px" (`given`, for files that state none), else "assumed"."""
    if micrograph.nm_per_px is not None:
        return micrograph.nm_per_px, "metadata"
    if given is not None:
        return float(given), "--nm-per-px"
    return float(assumed), "assumed"


def plausible_nm_per_px(value) -> float | None:
    """`value` as a float when it is a believable microscope pixel size, else None."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or not MIN_NM_PER_PX <= value <= MAX_NM_PER_PX:
        return None
    return value


def to_gray_integer(data: np.ndarray) -> np.ndarray:
    """Any 2-D or (H, W, samples) array -> 2-D uint8 or uint16, keeping 8/16-bit data exactly."""
    data = np.asarray(data)
    if data.ndim == 3:
        data = _luminance(data)
    if data.dtype == np.bool_:
        return data.astype(np.uint8) * np.uint8(255)
    if data.dtype in (np.uint8, np.uint16):
        return data
    if data.dtype.kind in "ui" and data.size and data.min() >= 0 and data.max() <= 65535:
        return data.astype(np.uint16)  # 16-bit data that arrived in a wider integer type
    values = data.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(data.shape, dtype=np.uint16)
    lo, hi = float(values[finite].min()), float(values[finite].max())
    values = np.where(finite, values, lo)
    if hi <= lo:
        return np.zeros(data.shape, dtype=np.uint16)
    return np.rint((values - lo) * (65535.0 / (hi - lo))).astype(np.uint16)


def _read_tiff(path: Path, settings: DecodeSettings) -> tuple[np.ndarray, float | None]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.pages:
            raise DecodeError(path, "TIFF file has no pages")
        page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
        _check_tiff_page(path, page, settings)
        data = np.asarray(page.asarray())
        axes = page.axes
        nm = _tiff_nm_per_px(page, getattr(tif, "imagej_metadata", None))
    if "S" in axes and data.ndim == len(axes):
        data = np.moveaxis(data, axes.index("S"), -1)
    while data.ndim > 3 or (data.ndim == 3 and data.shape[-1] > 4):
        data = data[0]
    if data.ndim not in (2, 3):
        raise DecodeError(path, f"unsupported TIFF layout (axes {axes}, shape {data.shape})")
    return to_gray_integer(data), nm


def _tiff_nm_per_px(page, imagej: dict | None) -> float | None:
    tags = page.tags
    res = tags.get("XResolution")
    if res is None:
        return None
    value = res.value
    try:
        per_unit = value[0] / value[1] if isinstance(value, tuple) else float(value)
    except (TypeError, ZeroDivisionError, IndexError):
        return None
    if not per_unit or per_unit <= 0:
        return None
    unit_tag = tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag is not None else 2  # the TIFF default is inch
    nm_per_unit = _TIFF_UNIT_NM.get(unit)
    if imagej and isinstance(imagej.get("unit"), str):  # ImageJ: unit in the description, unit tag "none"
        nm_per_unit = _NM_PER_UNIT.get(imagej["unit"].strip().lower(), nm_per_unit if unit != 1 else None)
    if nm_per_unit is None:
        return None
    return plausible_nm_per_px(nm_per_unit / per_unit)


def _read_pillow(path: Path, settings: DecodeSettings) -> tuple[np.ndarray, float | None]:
    with open_checked_pillow(path, settings) as im:
        dpi = im.info.get("dpi")
        nm = None
        if isinstance(dpi, tuple) and dpi and dpi[0]:
            nm = plausible_nm_per_px(25.4e6 / float(dpi[0]))
        mode = im.mode
        if mode in ("L", "1"):
            return np.asarray(im.convert("L")), nm
        if mode.startswith("I") or mode == "F":
            return to_gray_integer(np.asarray(im)), nm
        if mode in ("LA", "La"):
            return np.asarray(im.getchannel(0)), nm
        return np.asarray(im.convert("RGB").convert("L")), nm
