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
- Hostile files: the header is read first and every sample counted (width x height x depth of the
  page used x samples per pixel x bytes per sample) before any pixel buffer is allocated: more
  than `max_pixels` pixels, a decoded buffer above `DecodeSettings.max_bytes` (4 bytes per allowed
  pixel, 1 GiB by default), or more than 4 samples per pixel (gray, gray+alpha, RGB, RGBA or
  CMYK; virion supports no other multi-channel case: export the channel you want as its own
  image) is refused. Every failure is a `DecodeError` naming the file and the reason; what
  tifffile logs while reading a file is kept out of the terminal and, if the file fails, added
  to the reason.
"""

from __future__ import annotations

import logging
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# Percentiles on a strided sample above this many pixels: same answer to within noise, far faster.
_PERCENTILE_SAMPLE = 1 << 20
# Gray, gray+alpha, RGB, RGBA / CMYK. More is a multi-channel stack (or a forged header).
MAX_SAMPLES_PER_PIXEL = 4
# Bytes a pixel takes inside Pillow ("1", "L", "P" one byte; 16-bit modes two; all others four).
_PIL_ONE_BYTE = ("1", "L", "P")


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
                raise ValueError(
                    f"DecodeSettings.stretch must be two percentiles 0 <= low < high <= 100, got {self.stretch}"
                )
            object.__setattr__(self, "stretch", (lo, hi))

    @property
    def max_bytes(self) -> int:
        """Largest decoded buffer allowed before conversion: 4 bytes per allowed pixel.

        Derived, not stored, so the cache key and saved settings stay what they were.
        """
        return 4 * int(self.max_pixels)

    def to_json(self) -> dict:
        return {
            "size": int(self.size),
            "stretch": list(self.stretch) if self.stretch else None,
            "max_pixels": int(self.max_pixels),
        }


class _TiffLogCapture(logging.Filter):
    """Keeps tifffile's log records (hundreds of lines for a folder of odd TIFFs) out of the
    terminal while this thread decodes, and hands them to the failure reason instead.

    Outside `decode_image` (no capture active in the thread) records pass through untouched.
    """

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        records = getattr(self.local, "records", None)
        if records is None:
            return True
        try:
            records.append(record.getMessage())
        except (TypeError, ValueError):  # a malformed log call must not break decoding
            records.append(str(record.msg))
        return False

    @contextmanager
    def capture(self):
        previous = getattr(self.local, "records", None)
        self.local.records = []
        try:
            yield self.local.records
        finally:
            self.local.records = previous


_TIFF_LOG = _TiffLogCapture()
logging.getLogger("tifffile").addFilter(_TIFF_LOG)


def _log_note(messages: list[str]) -> str:
    """The first tifffile message, shortened, without tifffile's '<TiffPage ...>' object prefix."""
    if not messages:
        return ""
    text = " ".join(str(messages[0]).split())
    if text.startswith("<") and "> " in text:
        text = text.split("> ", 1)[1]
    if len(text) > 160:
        text = text[:157] + "..."
    more = f" (+{len(messages) - 1} more)" if len(messages) > 1 else ""
    return f"; tifffile: {text}{more}"


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
    with _TIFF_LOG.capture() as logged:
        try:
            if head in _TIFF_MAGIC:
                gray = _read_tiff(path, settings)
            else:
                gray = _read_pillow(path, settings)
            return _resize(gray, settings.size)
        except DecodeError as exc:
            if logged and not exc.reason.endswith("refusing to decode"):
                raise DecodeError(path, exc.reason + _log_note(logged)) from None
            raise
        except MemoryError:
            raise DecodeError(path, "not enough memory to decode the image") from None
        except Exception as exc:  # any decoder failure on a bad file becomes one clear message
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DecodeError(path, f"cannot decode ({type(exc).__name__}: {reason})" + _log_note(logged)) from None


def decode_rgb(path, settings: DecodeSettings = DecodeSettings()) -> np.ndarray:
    """Decode to uint8 (size, size, 3): the grayscale image replicated, as the models expect."""
    return np.repeat(decode_image(path, settings)[..., None], 3, axis=-1)


# --------------------------------------------------------------------------------------------


def _refuse_if_huge(
    path: Path,
    width: int,
    height: int,
    depth: int,
    settings: DecodeSettings,
    samples: int = 1,
    bytes_per_sample: int = 1,
) -> None:
    """Refuse, from the header alone, an image whose decoded buffer would be too large.

    Every sample counts: width x height x depth (of the one page used) x samples per pixel x
    bytes per sample. A 2 MB TIFF can declare 8192x8192 pixels of 32 or 65,535 samples each.
    """
    depth, samples, bytes_per_sample = max(int(depth), 1), int(samples), max(int(bytes_per_sample), 1)
    pixels = int(width) * int(height) * depth
    if pixels > settings.max_pixels:
        raise DecodeError(
            path,
            f"header declares {width}x{height}"
            + (f"x{depth}" if depth > 1 else "")
            + f" = {pixels:,} pixels, more than the limit of {settings.max_pixels:,} "
            f"(DecodeSettings.max_pixels); refusing to decode",
        )
    if pixels == 0 or samples < 1:
        raise DecodeError(path, f"header declares an empty image ({width}x{height}, {samples} samples per pixel)")
    if samples > MAX_SAMPLES_PER_PIXEL:
        raise DecodeError(
            path,
            f"header declares {samples:,} samples per pixel ({width}x{height}); virion reads "
            f"at most {MAX_SAMPLES_PER_PIXEL} (gray, gray+alpha, RGB, RGBA/CMYK): save the "
            f"channel to use as a grayscale image; refusing to decode",
        )
    nbytes = pixels * samples * bytes_per_sample
    if nbytes > settings.max_bytes:
        raise DecodeError(
            path,
            f"header declares {width}x{height}"
            + (f"x{depth}" if depth > 1 else "")
            + f" pixels of {samples} x {bytes_per_sample}-byte samples = {nbytes:,} bytes, more "
            f"than the limit of {settings.max_bytes:,} (4 x DecodeSettings.max_pixels); "
            f"refusing to decode",
        )


def _read_tiff(path: Path, settings: DecodeSettings) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.pages:
            raise DecodeError(path, "TIFF file has no pages")
        page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
        _check_tiff_page(path, page, settings)
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


def _check_tiff_page(path: Path, page, settings: DecodeSettings) -> None:
    """Count the samples of the page (and of one tile) from its tags, before any pixel is read."""
    samples = int(getattr(page, "samplesperpixel", 1) or 1)
    dtype = getattr(page, "dtype", None)
    if dtype is not None:
        itemsize = np.dtype(dtype).itemsize
    else:
        bits = getattr(page, "bitspersample", 8)
        bits = max(bits) if isinstance(bits, tuple) else int(bits or 8)
        itemsize = max(1, -(-bits // 8))
    depth = int(getattr(page, "imagedepth", 1) or 1)
    _refuse_if_huge(path, page.imagewidth, page.imagelength, depth, settings, samples, itemsize)
    if getattr(page, "is_tiled", False):  # a forged tile size is decoded into a buffer of its own
        tile = (
            int(page.tilewidth)
            * int(page.tilelength)
            * max(int(getattr(page, "tiledepth", 1) or 1), 1)
            * samples
            * itemsize
        )
        if tile > settings.max_bytes:
            raise DecodeError(
                path,
                f"header declares {page.tilewidth}x{page.tilelength} tiles of {tile:,} bytes, "
                f"more than the limit of {settings.max_bytes:,}; refusing to decode",
            )


def _pillow_bytes_per_pixel(mode: str) -> int:
    if mode in _PIL_ONE_BYTE:
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


@contextmanager
def open_checked_pillow(path: Path, settings: DecodeSettings):
    """A Pillow image whose size was checked from its header, first frame loaded (closed on exit)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bomb warnings are handled below; palette notices are noise
        try:
            im = Image.open(path)  # reads the header only
        except Image.DecompressionBombError:
            raise DecodeError(
                path,
                f"header declares a decompression bomb (more than "
                f"{2 * Image.MAX_IMAGE_PIXELS:,} pixels); refusing to decode",
            ) from None
        with im:
            width, height = im.size
            # Pillow holds every mode in 1, 2 or 4 bytes a pixel, whatever the bands.
            _refuse_if_huge(path, width, height, 1, settings, 1, _pillow_bytes_per_pixel(im.mode))
            im.seek(0)  # first frame of an animated GIF / multi-page file
            im.load()
            yield im


def _read_pillow(path: Path, settings: DecodeSettings) -> np.ndarray:
    with open_checked_pillow(path, settings) as im:
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


def decode_array(array, settings: DecodeSettings = DecodeSettings(), name: str = "array") -> np.ndarray:
    """An in-memory image decoded exactly as a file with the same pixels: uint8 (size, size).

    array: (H, W) or (H, W, 1|3|4) of any dtype (uint8 kept, uint16/float stretched or scaled per
    `settings`, colour to luminance, alpha dropped). `name` appears in the DecodeError message.
    """
    data = np.asarray(array)
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        data = _luminance(data)
    if data.ndim != 2 or data.dtype.kind not in "uifb":
        raise DecodeError(
            name, f"expected an (H, W) or (H, W, 3) array of numbers, got shape {data.shape} of {data.dtype}"
        )
    _refuse_if_huge(Path(name), data.shape[1], data.shape[0], 1, settings)
    return _resize(_to_gray_float(data, settings), settings.size)
