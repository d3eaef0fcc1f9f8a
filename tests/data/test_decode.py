"""Decoding: every format TEM data comes in, the stretch, and hostile or broken files."""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from virion.data.decode import DecodeError, DecodeSettings, decode_image, decode_rgb


def _expected_stretch(a: np.ndarray, lo_pct=0.5, hi_pct=99.5) -> np.ndarray:
    lo, hi = np.percentile(a.astype(np.float64), (lo_pct, hi_pct))
    return np.clip(np.rint((a - lo) * 255.0 / (hi - lo)), 0, 255)


def test_8bit_tiff_is_kept_exactly(tmp_path):
    a = (np.arange(32 * 32) % 251).reshape(32, 32).astype(np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", a)
    out = decode_image(tmp_path / "a.tif", DecodeSettings(size=32))
    assert out.dtype == np.uint8 and out.shape == (32, 32)
    np.testing.assert_array_equal(out, a)  # no stretch for 8-bit


def test_16bit_tiff_percentile_stretch(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(1000, 3001, size=(48, 48)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", a)
    out = decode_image(tmp_path / "a.tif", DecodeSettings(size=48)).astype(np.int32)
    expected = _expected_stretch(a)
    assert np.abs(out - expected).max() <= 1
    # The 0.5 / 99.5 percentiles land on black / white; neither end dominates.
    assert out.min() == 0 and out.max() == 255
    assert (out == 0).mean() < 0.02 and (out == 255).mean() < 0.02
    assert 100 < out.mean() < 155 and out.std() > 50


def test_16bit_narrow_range_is_not_white_or_black(tmp_path):
    a = np.linspace(1000, 3000, 64 * 64).reshape(64, 64).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", a)
    out = decode_image(tmp_path / "a.tif", DecodeSettings(size=32))
    assert 0.2 < (out > 127).mean() < 0.8
    assert len(np.unique(out)) > 100
    # A naive 8-bit conversion would saturate; the plain linear option keeps the dtype scale.
    linear = decode_image(tmp_path / "a.tif", DecodeSettings(size=64, stretch=None)).astype(np.int32)
    assert np.abs(linear - np.rint(a / 65535 * 255)).max() <= 1


def test_custom_stretch_percentiles(tmp_path):
    a = np.arange(100 * 100, dtype=np.uint16).reshape(100, 100)
    tifffile.imwrite(tmp_path / "a.tif", a)
    out = decode_image(tmp_path / "a.tif", DecodeSettings(size=100, stretch=(10.0, 90.0))).astype(np.int32)
    assert np.abs(out - _expected_stretch(a, 10, 90)).max() <= 1
    assert (out == 0).mean() == pytest.approx(0.10, abs=0.01)


def test_float_tiff_with_nan(tmp_path):
    a = np.linspace(-1.0, 1.0, 40 * 40, dtype=np.float32).reshape(40, 40)
    tifffile.imwrite(tmp_path / "f.tif", a)
    linear = decode_image(tmp_path / "f.tif", DecodeSettings(size=40, stretch=None)).astype(np.int32)
    assert np.abs(linear - np.rint((a + 1) / 2 * 255)).max() <= 1  # float: min-max
    stretched = decode_image(tmp_path / "f.tif", DecodeSettings(size=40)).astype(np.int32)
    assert np.abs(stretched - _expected_stretch(a)).max() <= 1
    a[0, :5] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", a)
    out = decode_image(tmp_path / "nan.tif", DecodeSettings(size=40))
    assert out.dtype == np.uint8 and out.max() == 255


def test_multipage_tiff_uses_first_page(tmp_path):
    with tifffile.TiffWriter(tmp_path / "m.tif") as w:
        w.write(np.full((20, 20), 10, np.uint8))
        w.write(np.full((20, 20), 200, np.uint8))
    out = decode_image(tmp_path / "m.tif", DecodeSettings(size=20))
    assert (out == 10).all()


def test_compressed_16bit_tiff(tmp_path):
    a = np.tile(np.arange(0, 4000, 100, dtype=np.uint16), (40, 1)) + 500
    tifffile.imwrite(tmp_path / "z.tif", a, compression="zlib")
    with tifffile.TiffFile(tmp_path / "z.tif") as t:
        assert t.pages[0].compression != 1  # really compressed
    out = decode_image(tmp_path / "z.tif", DecodeSettings(size=40)).astype(np.int32)
    assert np.abs(out - _expected_stretch(a)).max() <= 1


def test_rgb_tiff_and_16bit_png(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 1] = 200
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    assert abs(int(decode_image(tmp_path / "rgb.tif", DecodeSettings(size=16))[0, 0]) - round(0.587 * 200)) <= 1
    a = np.linspace(20000, 30000, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "a16.png")
    out = decode_image(tmp_path / "a16.png", DecodeSettings(size=32)).astype(np.int32)
    assert np.abs(out - _expected_stretch(a)).max() <= 1


def test_rgba_png_drops_alpha_to_luminance(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 255  # pure red
    rgba[:8, :, 3] = 0  # half transparent: alpha is dropped, the colour kept
    rgba[8:, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = decode_image(tmp_path / "a.png", DecodeSettings(size=16))
    assert np.all(np.abs(out.astype(int) - 76) <= 1)  # 0.299 * 255


def test_palette_gif(tmp_path):
    idx = np.zeros((16, 16), np.uint8)
    idx[:, 8:] = 1
    im = Image.fromarray(idx, "P")
    im.putpalette([0, 0, 255, 255, 255, 255] + [0] * 762)  # blue, white
    im.save(tmp_path / "p.gif")
    out = decode_image(tmp_path / "p.gif", DecodeSettings(size=16)).astype(int)
    assert abs(out[0, 0] - 29) <= 1 and out[0, 15] == 255  # luma of blue, white


def test_jpeg_and_bmp(tmp_path):
    a = np.full((24, 24), 100, np.uint8)
    Image.fromarray(a).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(a).save(tmp_path / "a.bmp")
    assert np.abs(decode_image(tmp_path / "a.jpg", DecodeSettings(size=24)).astype(int) - 100).max() <= 2
    np.testing.assert_array_equal(decode_image(tmp_path / "a.bmp", DecodeSettings(size=24)), a)


def test_resize_is_antialiased_and_ignores_aspect(tmp_path):
    checker = ((np.indices((64, 96)).sum(axis=0) % 2) * 255).astype(np.uint8)
    Image.fromarray(checker).save(tmp_path / "c.png")
    out = decode_image(tmp_path / "c.png", DecodeSettings(size=16))
    assert out.shape == (16, 16)
    # Nearest-neighbour would give pure 0/255; an antialiased filter averages to mid-gray.
    assert np.abs(out.astype(int) - 128).max() <= 10


def test_decode_rgb_replicates_gray(tmp_path):
    a = (np.arange(16 * 16) % 256).reshape(16, 16).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    out = decode_rgb(tmp_path / "a.png", DecodeSettings(size=16))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    for ch in range(3):
        np.testing.assert_array_equal(out[..., ch], a)


@pytest.mark.parametrize("kind", ["corrupt", "zero", "truncated_png", "truncated_tiff", "missing", "text"])
def test_broken_files_raise_decode_error(tmp_path, kind):
    path = tmp_path / f"{kind}.png"
    noise = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    if kind == "corrupt":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    elif kind == "zero":
        path.write_bytes(b"")
    elif kind == "truncated_png":
        Image.fromarray(noise).save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_tiff":
        path = tmp_path / "t.tif"
        tifffile.imwrite(path, noise.astype(np.uint16) * 200)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "text":
        path = tmp_path / "notes.tif"
        path.write_text("this is not an image")
    with pytest.raises(DecodeError) as info:
        decode_image(path, DecodeSettings(size=32))
    assert str(path) in str(info.value) and info.value.reason
    assert "\n" not in str(info.value)
    if kind == "zero":
        assert "empty" in info.value.reason


def _png_with_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _tiff_with_header(width: int, height: int) -> bytes:
    """A little-endian TIFF whose IFD declares width x height 16-bit pixels but holds 8 bytes."""
    entries = [  # tag, type (3 SHORT, 4 LONG), count, value
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 16),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8 + 2 + 12 * 9 + 4),
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, 8),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        ifd += struct.pack("<HHI", tag, typ, count) + (
            struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        )
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 8


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_huge_declared_size_is_refused_without_allocating(tmp_path, fmt):
    path = tmp_path / f"bomb.{fmt}"
    path.write_bytes(_png_with_header(200_000, 200_000) if fmt == "png" else _tiff_with_header(200_000, 200_000))
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError) as info:
            decode_image(path, DecodeSettings(size=32))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 1024 * 1024  # the declared image would need 40-80 GB
    assert str(path) in str(info.value)
    assert "refusing" in info.value.reason


def test_max_pixels_setting_is_honoured(tmp_path):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((64, 64), np.uint16))
    for name in ("a.png", "a.tif"):
        with pytest.raises(DecodeError, match="64x64"):
            decode_image(tmp_path / name, DecodeSettings(size=16, max_pixels=1000))
        assert decode_image(tmp_path / name, DecodeSettings(size=16)).shape == (16, 16)


def test_small_declared_tiff_header_decodes(tmp_path):
    """The hand-made TIFF is valid when its size is honest, so the refusal above is about size."""
    path = tmp_path / "small.tif"
    path.write_bytes(_tiff_with_header(2, 2))
    assert decode_image(path, DecodeSettings(size=4)).shape == (4, 4)


def test_bad_settings():
    with pytest.raises(ValueError):
        DecodeSettings(size=0)
    with pytest.raises(ValueError):
        DecodeSettings(stretch=(99.0, 1.0))


def test_samples_per_pixel_are_counted(tmp_path):
    """More than 4 samples a pixel is refused from the header; 4 (RGBA) still decodes."""
    tifffile.imwrite(
        tmp_path / "five.tif", np.zeros((8, 8, 5), np.uint8), photometric="minisblack", planarconfig="contig"
    )
    with tifffile.TiffFile(tmp_path / "five.tif") as t:
        assert t.pages[0].samplesperpixel == 5
    with pytest.raises(DecodeError, match="5 samples per pixel") as info:
        decode_image(tmp_path / "five.tif", DecodeSettings(size=8))
    assert str(tmp_path / "five.tif") in str(info.value)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 1] = 200
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    assert abs(int(decode_image(tmp_path / "rgba.tif", DecodeSettings(size=8))[0, 0]) - round(0.587 * 200)) <= 1


def test_decoded_bytes_are_counted_not_just_pixels(tmp_path):
    """64x64 pixels pass a 5000-pixel limit, but 16-bit RGBA needs 8 bytes a pixel (> 4 x 5000 bytes)."""
    tifffile.imwrite(
        tmp_path / "a.tif", np.zeros((64, 64, 4), np.uint16), photometric="rgb", extrasamples=["unassalpha"]
    )
    settings = DecodeSettings(size=16, max_pixels=5000)
    assert settings.max_bytes == 20000 and "max_bytes" not in settings.to_json()  # cache keys unchanged
    with pytest.raises(DecodeError, match="bytes") as info:
        decode_image(tmp_path / "a.tif", settings)
    assert "refusing" in info.value.reason
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((64, 64), np.uint16))  # 2 bytes a pixel: fits
    assert decode_image(tmp_path / "b.tif", settings).shape == (16, 16)
