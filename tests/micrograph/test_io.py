"""read_micrograph: full resolution, exact 8/16-bit pixels, pixel size from the file when it states one."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from virion.data.decode import DecodeError
from virion.micrograph.io import read_micrograph


def _ramp(h=37, w=53, dtype=np.uint8, top=255):
    return (np.arange(h * w).reshape(h, w) % (top + 1)).astype(dtype)


def test_8bit_png_is_read_exactly_at_full_size(tmp_path):
    pixels = _ramp()
    Image.fromarray(pixels).save(tmp_path / "m.png")
    m = read_micrograph(tmp_path / "m.png")
    assert m.pixels.dtype == np.uint8 and m.shape == (37, 53)
    np.testing.assert_array_equal(m.pixels, pixels)
    assert m.nm_per_px is None and m.path == tmp_path / "m.png"


def test_16bit_png_and_tiff_keep_every_level(tmp_path):
    pixels = (_ramp(dtype=np.uint32, top=65535) * 37 % 65536).astype(np.uint16)
    Image.fromarray(pixels).save(tmp_path / "m16.png")
    tifffile.imwrite(tmp_path / "m16.tif", pixels)
    for name in ("m16.png", "m16.tif"):
        m = read_micrograph(tmp_path / name)
        assert m.pixels.dtype == np.uint16, name
        np.testing.assert_array_equal(m.pixels, pixels)


def test_rgb_becomes_luminance_and_jpeg_reads(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "c.png")
    m = read_micrograph(tmp_path / "c.png")
    assert m.pixels.shape == (20, 30) and m.pixels.dtype == np.uint8
    assert abs(int(m.pixels[0, 0]) - round(0.299 * 200)) <= 1
    Image.fromarray(_ramp()).save(tmp_path / "j.jpg", quality=95)
    assert read_micrograph(tmp_path / "j.jpg").shape == (37, 53)


def test_float_tiff_maps_min_max_onto_uint16(tmp_path):
    data = np.linspace(-2.0, 3.0, 40 * 50, dtype=np.float32).reshape(40, 50)
    tifffile.imwrite(tmp_path / "f.tif", data)
    m = read_micrograph(tmp_path / "f.tif")
    assert m.pixels.dtype == np.uint16 and m.pixels.min() == 0 and m.pixels.max() == 65535
    assert np.all(np.diff(m.pixels.ravel().astype(np.int64)) >= 0)  # order kept


def test_tiff_resolution_tags_give_nm_per_px(tmp_path):
    pixels = _ramp(dtype=np.uint16, top=4000)
    # 0.5 nm per pixel = 2e7 pixels per centimetre.
    tifffile.imwrite(tmp_path / "cm.tif", pixels, resolution=(2e7, 2e7), resolutionunit=3)
    assert read_micrograph(tmp_path / "cm.tif").nm_per_px == pytest.approx(0.5)
    # ImageJ: unit in the description, resolution in pixels per unit (here 0.25 px/nm = 4 nm/px).
    tifffile.imwrite(tmp_path / "ij.tif", pixels, imagej=True, resolution=(0.25, 0.25), metadata={"unit": "nm"})
    assert read_micrograph(tmp_path / "ij.tif").nm_per_px == pytest.approx(4.0)
    tifffile.imwrite(tmp_path / "um.tif", pixels, imagej=True, resolution=(500, 500), metadata={"unit": "micron"})
    assert read_micrograph(tmp_path / "um.tif").nm_per_px == pytest.approx(2.0)
    # 72 dpi is a display default, not a pixel size.
    tifffile.imwrite(tmp_path / "dpi.tif", pixels, resolution=(72, 72), resolutionunit=2)
    assert read_micrograph(tmp_path / "dpi.tif").nm_per_px is None


def test_png_density_gives_nm_per_px_and_72_dpi_does_not(tmp_path):
    Image.fromarray(_ramp()).save(tmp_path / "a.png", dpi=(25.4e6 / 1.5, 25.4e6 / 1.5))
    assert read_micrograph(tmp_path / "a.png").nm_per_px == pytest.approx(1.5, rel=1e-3)
    Image.fromarray(_ramp()).save(tmp_path / "b.png", dpi=(72, 72))
    assert read_micrograph(tmp_path / "b.png").nm_per_px is None


def test_bad_files_raise_decode_error_naming_the_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    for name in ("empty.png", "junk.jpg", "missing.png"):
        with pytest.raises(DecodeError, match=name):
            read_micrograph(tmp_path / name)
    Image.fromarray(_ramp()).save(tmp_path / "big.png")
    with pytest.raises(DecodeError, match="refusing"):
        read_micrograph(tmp_path / "big.png", max_pixels=100)
