"""The synthetic TEM virus dataset: determinism, layout, file formats, refusals, CLI, and that the
classes carry real (size) information."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from virion.data.synth import CLASS_NAMES, generate_dataset, image_rng, render_image, split_counts
from virion.errors import VirionError

EXPECTED_CLASSES = [
    "Adenovirus",
    "Astrovirus",
    "CCHF",
    "Cowpox",
    "Ebola",
    "Influenza",
    "Lassa",
    "Marburg",
    "Nipah virus",
    "Norovirus",
    "Orf",
    "Papilloma",
    "Rift Valley",
    "Rotavirus",
]


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.parent != root
    }


@pytest.fixture(scope="module")
def small_png(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("png") / "ds", per_class=5, seed=3, size=48, progress=False)


def test_class_names_are_the_benchmark_classes():
    assert list(CLASS_NAMES) == EXPECTED_CLASSES


def test_layout_counts_and_extras(small_png):
    train, val, test = split_counts(5, (0.6, 0.2, 0.2))
    assert (train, val, test) == (3, 1, 1)
    for split, n in (("train", train), ("validation", val), ("test", test)):
        folders = sorted(p.name for p in (small_png / split).iterdir())
        assert folders == sorted(EXPECTED_CLASSES)
        for name in EXPECTED_CLASSES:
            files = list((small_png / split / name).glob("*.png"))
            assert len(files) == n, (split, name)
    names = [p.name for p in small_png.rglob("*.png") if p.parent != small_png]
    assert len(names) == len(set(names)) == 14 * 5  # unique file names across splits
    assert "synthetic" in (small_png / "README.txt").read_text().lower()
    montage = Image.open(small_png / "montage.png")
    assert montage.size[0] > 2 * 48 and montage.size[1] > 7 * 48
    assert json.loads((small_png / "synth.json").read_text())["complete"] is True


def test_png_is_8bit_grayscale(small_png):
    img = Image.open(next((small_png / "train" / "Cowpox").glob("*.png")))
    assert img.mode == "L" and img.size == (48, 48)
    arr = np.asarray(img)
    assert arr.std() > 5  # not a blank image


def test_same_seed_same_bytes_other_seed_differs(tmp_path, small_png):
    again = generate_dataset(tmp_path / "again", per_class=5, seed=3, size=48, progress=False)
    assert _digest(again) == _digest(small_png)
    other = generate_dataset(tmp_path / "other", per_class=5, seed=4, size=48, progress=False)
    a, b = _digest(other), _digest(small_png)
    assert a.keys() == b.keys() and all(a[k] != b[k] for k in a)


def test_parallel_workers_give_identical_files(tmp_path, small_png):
    par = generate_dataset(tmp_path / "par", per_class=5, seed=3, size=48, progress=False, workers=2)
    assert _digest(par) == _digest(small_png)


def test_render_image_deterministic_range_and_dtype():
    for ci, name in enumerate(CLASS_NAMES):
        a = render_image(name, image_rng(0, ci, 0), 64, 1.0)
        b = render_image(name, image_rng(0, ci, 0), 64, 1.0)
        c = render_image(name, image_rng(1, ci, 0), 64, 1.0)
        assert a.dtype == np.float32 and a.shape == (64, 64)
        assert 0.0 <= a.min() and a.max() <= 1.0
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_16bit_tiff_uses_the_range(tmp_path):
    out = generate_dataset(tmp_path / "tif", per_class=3, seed=0, size=48, fmt="tif", bit_depth=16, progress=False)
    files = sorted(out.rglob("*.tif"))
    assert len(files) == 14 * 3
    arr = tifffile.imread(files[0])
    assert arr.dtype == np.uint16 and arr.shape == (48, 48)
    assert arr.max() > 255 and np.ptp(arr) > 1000
    assert np.any(arr % 257 != 0)  # real 16-bit detail, not 8-bit values scaled up


def test_16bit_png_round_trips(tmp_path):
    out = generate_dataset(tmp_path / "p16", per_class=3, seed=0, size=32, bit_depth=16, progress=False)
    arr = np.asarray(Image.open(next((out / "test").rglob("*.png"))))
    assert arr.dtype in (np.uint16, np.int32) and arr.max() > 255


def test_outputs_decode_with_the_project_decoder(tmp_path, small_png):
    decode = pytest.importorskip("virion.data.decode")
    settings = decode.DecodeSettings(size=32)
    png = decode.decode_image(next((small_png / "train" / "Orf").glob("*.png")), settings)
    assert png.dtype == np.uint8 and png.shape == (32, 32)
    out = generate_dataset(tmp_path / "tif16", per_class=3, seed=1, size=48, fmt="tif", bit_depth=16, progress=False)
    tif = decode.decode_image(next((out / "train" / "Ebola").glob("*.tif")), settings)
    assert tif.dtype == np.uint8 and tif.shape == (32, 32) and tif.std() > 5


def test_refuses_foreign_non_empty_folder(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "thesis.docx").write_text("precious")
    with pytest.raises(VirionError, match="not empty"):
        generate_dataset(target, per_class=3, size=32, progress=False)
    assert (target / "thesis.docx").read_text() == "precious"
    generate_dataset(target, per_class=3, size=32, progress=False, overwrite=True)
    assert (target / "thesis.docx").exists() and (target / "train" / "Orf").is_dir()


def test_rewrites_its_own_output_without_stale_files(tmp_path):
    out = generate_dataset(tmp_path / "ds", per_class=5, size=32, progress=False)
    generate_dataset(out, per_class=3, size=32, progress=False)
    assert len(list((out / "train" / "Lassa").iterdir())) == split_counts(3, (0.6, 0.2, 0.2))[0]


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"fmt": "jpg"}, "format"),
        ({"bit_depth": 12}, "bit depth"),
        ({"difficulty": -1}, "difficulty"),
        ({"per_class": 2}, "per_class"),
        ({"splits": (0.5, 0.2, 0.2)}, "splits"),
        ({"size": 4}, "size"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, kwargs, word):
    with pytest.raises(VirionError, match=word) as err:
        generate_dataset(tmp_path / "x", progress=False, **{"per_class": 3, "size": 32, **kwargs})
    assert "\n" not in str(err.value)


def test_cli_writes_the_layout(tmp_path, capsys):
    from virion.cli.main import main

    out = tmp_path / "cli"
    rc = main(
        [
            "synth",
            "--out",
            str(out),
            "--per-class",
            "3",
            "--size",
            "32",
            "--format",
            "tif",
            "--bit-depth",
            "16",
            "--seed",
            "5",
            "--difficulty",
            "0.5",
            "--quiet",
        ]
    )
    assert rc == 0
    assert len(list(out.glob("*/*/*.tif"))) == 14 * 3
    assert (out / "montage.png").is_file()
    assert main(["synth", "--out", str(tmp_path / "bad"), "--per-class", "2", "--quiet"]) == 2
    assert "per_class" in capsys.readouterr().err


def _particle_area(name: str, rng, size: int) -> float:
    """Share of the field covered by the class's virus particles (geometry, not exposure)."""
    _, mask = render_image(name, rng, size, 0.0, return_mask=True)
    return float((mask > 0.5).mean())


def test_particle_size_separates_small_and_big_classes():
    """Astrovirus (~30 nm) particles cover much less of the field than a Cowpox brick (~250x350 nm)."""
    astro = [_particle_area("Astrovirus", image_rng(0, 1, i), 64) for i in range(12)]
    cow = [_particle_area("Cowpox", image_rng(0, 3, i), 64) for i in range(12)]
    assert np.mean(cow) > 3 * np.mean(astro) and max(astro) < min(cow)


def test_every_class_shows_a_particle():
    """A crop is centred on a particle: no class may produce an empty field (e.g. a filament
    off-screen), and the particle must stand out from the stain around it at any exposure."""
    for ci, name in enumerate(CLASS_NAMES):
        for i in range(6):
            img, mask = render_image(name, image_rng(2, ci, i), 48, 0.0, return_mask=True)
            inside, outside = mask > 0.5, mask < 0.05
            assert inside.mean() > 0.004, (name, i, inside.mean())
            if outside.mean() > 0.05:  # a big particle may fill the whole field
                assert img[inside].mean() > img[outside].mean() + 0.03, (name, i)


def test_mask_does_not_change_the_image():
    a = render_image("Papilloma", image_rng(0, 11, 0), 64)
    b, mask = render_image("Papilloma", image_rng(0, 11, 0), 64, return_mask=True)
    np.testing.assert_array_equal(a, b)
    assert mask.shape == a.shape and 0 < mask.mean() < 1
