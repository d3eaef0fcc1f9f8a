"""Decode any TEM image file to a small uint8 grayscale array, the one decoder of virion.

Choices (and why):

- TIFF goes through tifffile (8/16/32-bit integer, float, multi-page, compressed: the first page
  is used); everything else through Pillow. Files are recognised by their first bytes, not by
  their extension, so a mislabelled file still decodes.
- 8-bit images are kept as they are (no stretch): they are already display-ready, and stretching
  them would change images that the reference pipeline fed unchanged.
- 16-bit, 32-bit and float images get a robust per-image percentile stretch (default 0.5-99.5%)
  computed at full resolution, so a 16-bit image that uses only part of its range is neither
  clipped to white nor crushed to black. `stretch=None` scales linearly by the dtype's range
  (float: the image's min-max).
- Colour goes to luminance (ITU-R 601). Alpha is dropped, not composited: TEM exports that carry
  alpha almost always have it opaque, and dropping it keeps the pixel values unchanged.
- Resizing to (size, size) ignores the aspect ratio (as the reference pipeline did) and uses
  Pillow's Lanczos filter on float data, which is antialiased when shrinking.
- Hostile files: an image whose header declares more than `max_pixels` pixels is refused before
  any pixel buffer is allocated; every failure is a `DecodeError` naming the file and the reason.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# Percentiles on a strided sample above this many pixels: same answer to within noise, far faster.
_PERCENTILE_SAMPLE = 1 << 20


@dataclass(frozen=True)
class DecodeSettings:
    """How files become arrays; part of the cache key, and saved with each model."""

    size: int = 128
    stretch: tuple[float, float] | None = (0.5, 99.5)
    max_pixels: int = 1 << 28

    def __post_init__(self) -> None:
        if int(self.size) < 1:
            raise ValueError(f"DecodeSettings.size must be a positive integer, got {self.size}")
        if self.stretch is not None:
            lo, hi = (float(v) for v in self.stretch)
            if not 0.0 <= lo < hi <= 100.0:
                raise ValueError(f"DecodeSettings.stretch must be two percentiles 0 <= low < high <= 100, "
                                 f"got {self.stretch}")
            object.__setattr__(self, "stretch", (lo, hi))

    def to_json(self) -> dict:
        return {"size": int(self.size), "stretch": list(self.stretch) if self.stretch else None,
                "max_pixels": int(self.max_pixels)}


class DecodeError(Exception):
    """A file that cannot be decoded; the message names the file and the reason."""

    def __init__(self, path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def decode_image(path, settings: DecodeSettings = DecodeSettings()) -> np.ndarray:
    """Decode `path` to uint8 grayscale of shape (size, size); raise DecodeError on any failure."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise DecodeError(path, f"cannot read the file ({exc.strerror or exc})") from None
    if not head:
        raise DecodeError(path, "file is empty (0 bytes)")
    try:
        if head in _TIFF_MAGIC:
            gray = _read_tiff(path, settings)
        else:
            gray = _read_pillow(path, settings)
        return _resize(gray, settings.size)
    except DecodeError:
        raise
    except MemoryError:
        raise DecodeError(path, "not enough memory to decode the image") from None
    except Exception as exc:  # any decoder failure on a bad file becomes one clear message
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DecodeError(path, f"cannot decode ({type(exc).__name__}: {reason})") from None


def decode_rgb(path, settings: DecodeSettings = DecodeSettings()) -> np.ndarray:
    """Decode to uint8 (size, size, 3): the grayscale image replicated, as the models expect."""
    return np.repeat(decode_image(path, settings)[..., None], 3, axis=-1)


# --------------------------------------------------------------------------------------------


def _refuse_if_huge(path: Path, width: int, height: int, depth: int, settings: DecodeSettings) -> None:
    pixels = int(width) * int(height) * max(int(depth), 1)
    if pixels > settings.max_pixels:
        raise DecodeError(path, f"header declares {width}x{height}" + (f"x{depth}" if depth > 1 else "")
                          + f" = {pixels:,} pixels, more than the limit of {settings.max_pixels:,} "
                          f"(DecodeSettings.max_pixels); refusing to decode")
    if pixels == 0:
        raise DecodeError(path, f"header declares an empty image ({width}x{height})")


def _read_tiff(path: Path, settings: DecodeSettings) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.pages:
            raise DecodeError(path, "TIFF file has no pages")
        page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
        _refuse_if_huge(path, page.imagewidth, page.imagelength, getattr(page, "imagedepth", 1), settings)
        data = page.asarray()
        axes = page.axes
    data = np.asarray(data)
    # Bring samples last, take the first plane of any other leading axis (depth, planes).
    if "S" in axes and data.ndim == len(axes):
        data = np.moveaxis(data, axes.index("S"), -1)
    while data.ndim > 3 or (data.ndim == 3 and data.shape[-1] > 4):
        data = data[0]
    if data.ndim == 3:
        data = _luminance(data)
    if data.ndim != 2:
        raise DecodeError(path, f"unsupported TIFF layout (axes {axes}, shape {data.shape})")
    return _to_gray_float(data, settings)


def _read_pillow(path: Path, settings: DecodeSettings) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bomb warnings are handled below; palette notices are noise
        try:
            im = Image.open(path)  # reads the header only
        except Image.DecompressionBombError:
            raise DecodeError(path, f"header declares a decompression bomb (more than "
                                    f"{2 * Image.MAX_IMAGE_PIXELS:,} pixels); refusing to decode") from None
        with im:
            width, height = im.size
            _refuse_if_huge(path, width, height, 1, settings)
            im.seek(0)  # first frame of an animated GIF / multi-page file
            im.load()
            mode = im.mode
            if mode in ("L", "1"):
                return np.asarray(im.convert("L"), dtype=np.float32)
            if mode.startswith("I") or mode == "F":
                arr = np.asarray(im)
                if mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
                    arr = arr.astype(np.uint16)  # 16-bit PNGs arrive as 32-bit "I"
                elif mode.startswith("I;16"):
                    arr = arr.astype(np.uint16)
                return _to_gray_float(arr, settings)
            if mode in ("LA", "La"):
                return np.asarray(im.getchannel(0), dtype=np.float32)
            # P, RGB, RGBA, CMYK, YCbCr, ...: alpha dropped, luminance.
            return np.asarray(im.convert("RGB").convert("L"), dtype=np.float32)


def _luminance(data: np.ndarray) -> np.ndarray:
    """(H, W, S) -> (H, W): ITU-R 601 luma of the first three samples; alpha dropped."""
    if data.shape[-1] < 3:
        return data[..., 0]
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float64)
    gray = data[..., :3].astype(np.float64) @ weights
    if data.dtype.kind in "ui":  # keep the integer type so 8-bit stays unstretched, 16-bit stays 16-bit
        return np.rint(gray).astype(data.dtype)
    return gray


def _to_gray_float(data: np.ndarray, settings: DecodeSettings) -> np.ndarray:
    """Any 2-D array -> float32 in 0..255. uint8 unchanged; deeper types stretched or scaled."""
    if data.dtype == np.bool_:
        return data.astype(np.float32) * 255.0
    if data.dtype == np.uint8:
        return data.astype(np.float32)
    # float32 is exact for 16-bit data and halves the memory of float64 on large micrographs.
    values = data.astype(np.float64 if data.dtype == np.float64 else np.float32, copy=False)
    finite = np.isfinite(values)
    if not finite.all():
        if not finite.any():
            return np.zeros(data.shape, dtype=np.float32)
        values = np.where(finite, values, np.nanmin(np.where(finite, values, np.nan)))
    if settings.stretch is not None:
        lo, hi = _percentiles(values, settings.stretch)
        if hi > lo:
            return _scale(values, lo, hi)
    # Linear: by the integer dtype's range; float by its own min-max.
    if data.dtype.kind in "ui":
        info = np.iinfo(data.dtype)
        return _scale(values, float(info.min), float(info.max))
    lo, hi = float(values.min()), float(values.max())
    if hi > lo:
        return _scale(values, lo, hi)
    return np.full(data.shape, 255.0 * min(max(lo, 0.0), 1.0), dtype=np.float32)  # constant float image


def _percentiles(values: np.ndarray, stretch: tuple[float, float]) -> tuple[float, float]:
    sample = values
    if values.size > _PERCENTILE_SAMPLE:
        step = int(np.ceil(np.sqrt(values.size / _PERCENTILE_SAMPLE)))
        sample = values[::step, ::step]
    lo, hi = np.percentile(sample, stretch)
    return float(lo), float(hi)


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    out = (values - values.dtype.type(lo)) * values.dtype.type(255.0 / (hi - lo))
    return np.clip(out, 0.0, 255.0).astype(np.float32, copy=False)


def _resize(gray: np.ndarray, size: int) -> np.ndarray:
    gray = np.ascontiguousarray(gray, dtype=np.float32)
    if gray.shape != (size, size):
        gray = np.asarray(Image.fromarray(gray).resize((size, size), Image.Resampling.LANCZOS))
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)
