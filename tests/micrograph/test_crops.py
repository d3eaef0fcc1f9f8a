"""`virion crops`: windows are array slices, resampling keeps particles centred and sized, padding never
leaks, the manifest groups as specified and `load_dataset` keeps groups together, bad rows are reported,
background windows keep away from boxes, YOLO input, and the command end to end.

Tiny synthetic micrographs are made in each test (no shared data).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from virion.cli.main import main
from virion.data.layout import load_dataset
from virion.data.padding import padding_mask
from virion.errors import VirionError
from virion.micrograph.crops import BACKGROUND_CLASS, cut_crops, cut_window


def texture(shape, seed=0, dtype=np.uint8):
    """Stain-like background: smoothed noise plus grain, well above the padding level."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=shape), 3)
    smooth = (smooth - smooth.mean()) / smooth.std()
    values = 130 + 30 * smooth + rng.normal(0, 8, shape)
    values = np.clip(values, 30, 240)
    if dtype == np.uint16:
        return (values * 257).astype(np.uint16)
    return values.astype(np.uint8)


def write_csv(path: Path, rows: list[dict], columns=None) -> Path:
    columns = columns or list(rows[0])
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_manifest(out: Path) -> list[dict]:
    with open(out / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def crop_of(out: Path, row: dict) -> np.ndarray:
    return np.asarray(Image.open(out / row["path"]))


# ----------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_windows_inside_the_image_equal_array_slicing(tmp_path, dtype):
    pixels = texture((160, 200), seed=1, dtype=dtype)
    Image.fromarray(pixels).save(tmp_path / "m_1.png")
    boxes = [(60.2, 50.7, 90.2, 80.7), (100, 100, 140, 150), (40, 40, 41, 41)]
    rows = [{"path": "m_1.png", "label": "A", "xmin": b[0], "ymin": b[1], "xmax": b[2], "ymax": b[3]} for b in boxes]
    write_csv(tmp_path / "boxes.csv", rows)
    result = cut_crops(tmp_path / "boxes.csv", tmp_path / "out", size=64, progress=False)
    assert result.total == 3 and not result.bad and sum(result.filled.values()) == 0
    for row, (x0, y0, x1, y1) in zip(read_manifest(tmp_path / "out"), boxes):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        c, r = int(np.floor(cx - 32 + 0.5)), int(np.floor(cy - 32 + 0.5))
        crop = crop_of(tmp_path / "out", row)
        assert crop.dtype == dtype
        np.testing.assert_array_equal(crop, pixels[r : r + 64, c : c + 64])
        assert float(row["filled"]) == 0.0


def test_window_past_the_edge_is_the_mirror_of_the_image():
    pixels = texture((120, 150), seed=2)
    valid = np.ones(pixels.shape, dtype=bool)
    padded = np.pad(pixels, 64, mode="reflect")
    for cx, cy in [(10.0, 10.0), (149.0, 60.0), (75.0, 119.5), (3.0, 117.0)]:
        window, filled, past_edge, into_padding = cut_window(pixels, valid, cx, cy, 64)
        c, r = int(np.floor(cx - 32 + 0.5)), int(np.floor(cy - 32 + 0.5))
        np.testing.assert_array_equal(window, padded[r + 64 : r + 128, c + 64 : c + 128])
        assert filled > 0 and past_edge and not into_padding


@pytest.mark.parametrize("how", ["metadata", "option"])
def test_resampling_centres_the_particle_at_the_right_size(tmp_path, how):
    # A disk of radius 20 nm on a micrograph at 0.5 nm/px (40 px), cut at 1 nm/px: radius 20 px.
    nm = 0.5
    yy, xx = np.mgrid[0:400, 0:400]
    cx, cy = 211.3, 187.6  # continuous centre (pixel i covers [i, i+1))
    disk = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= 40.0**2
    pixels = np.where(disk, 220, 60).astype(np.uint8)
    if how == "metadata":
        tifffile.imwrite(tmp_path / "m.tif", pixels, resolution=(1e7 / nm, 1e7 / nm), resolutionunit=3)
        name, option = "m.tif", None
    else:
        Image.fromarray(pixels).save(tmp_path / "m.png")
        name, option = "m.png", nm
    write_csv(tmp_path / "p.csv", [{"path": name, "label": "A", "x": cx, "y": cy}])
    result = cut_crops(tmp_path / "p.csv", tmp_path / "out", size=64, nm_per_px=option, progress=False)
    assert result.resampled == 1 and result.scale_sources == {"metadata" if option is None else "--nm-per-px": 1}
    crop = crop_of(tmp_path / "out", read_manifest(tmp_path / "out")[0]).astype(float)
    inside = crop > 140
    ys, xs = np.nonzero(inside)
    assert abs(xs.mean() + 0.5 - 32) < 0.3 and abs(ys.mean() + 0.5 - 32) < 0.3
    assert inside.sum() == pytest.approx(np.pi * 20**2, rel=0.04)


# ---------------------------------------------------------------------------------------- padding


def _stats(window: np.ndarray) -> dict[str, float]:
    w = window.astype(float)
    return {
        "min": w.min(),
        "p1": np.percentile(w, 1),
        "dark": float((window <= 8).sum()),
        "mean": w.mean(),
        "sd": w.std(),
        "gradient": float(np.abs(np.diff(w, axis=1)).mean()),
    }


def test_padding_never_leaks_into_simple_statistics():
    pixels = texture((400, 400), seed=3)
    pixels[:, 260:] = 0  # black padding on the right
    pixels[330:, :] = 0  # and at the bottom
    valid = ~padding_mask(pixels)
    assert not valid[:, 262:].any()
    rng = np.random.default_rng(0)
    clean = []
    for _ in range(40):  # windows entirely in the data
        cx, cy = rng.uniform(40, 215), rng.uniform(40, 285)
        window, filled, *_ = cut_window(pixels, valid, cx, cy, 64)
        assert filled == 0
        clean.append(_stats(window))
    # Each statistic of a filled window must look like one of a window of data: within the data
    # windows' range widened by 3 of their standard deviations.
    spread = {k: np.std([s[k] for s in clean]) for k in clean[0]}
    lo = {k: min(s[k] for s in clean) - 3 * spread[k] for k in clean[0]}
    hi = {k: max(s[k] for s in clean) + 3 * spread[k] for k in clean[0]}
    fractions = []
    for cx, cy in [(240, 150), (250, 100), (262, 200), (270, 60), (230, 310), (250, 320), (270, 330)]:
        window, filled, past_edge, into_padding = cut_window(pixels, valid, cx, cy, 64)
        assert into_padding and not past_edge and filled > 0
        fractions.append(filled)
        stats = _stats(window)
        for k, v in stats.items():
            assert lo[k] - 1e-9 <= v <= hi[k] + 1e-9, (k, v, lo[k], hi[k], filled)
    assert max(fractions) > 0.4  # some windows are mostly padding, yet look like data
    # The test can fail: the naive window (padding kept) is caught by the same statistics.
    c, r = 262 - 32, 200 - 32
    naive = _stats(pixels[r : r + 64, c : c + 64])
    assert naive["dark"] > hi["dark"] and naive["min"] < lo["min"]


def test_filled_windows_are_counted(tmp_path):
    pixels = texture((200, 200), seed=4)
    pixels[:, 150:] = 0
    Image.fromarray(pixels).save(tmp_path / "m.png")
    rows = [
        {"path": "m.png", "label": "A", "x": 100, "y": 100},  # inside
        {"path": "m.png", "label": "A", "x": 140, "y": 100},  # into padding
        {"path": "m.png", "label": "B", "x": 20, "y": 10},  # past the top-left edge
        {"path": "m.png", "label": "A", "x": 195, "y": 100},  # nothing but padding: a bad row
    ]
    write_csv(tmp_path / "p.csv", rows)
    result = cut_crops(tmp_path / "p.csv", tmp_path / "out", size=64, progress=False)
    assert result.total == 3 and result.filled == {"A": 1, "B": 1}
    assert len(result.bad) == 1 and "line 5" in result.bad[0] and "no valid pixel" in result.bad[0]
    assert result.filled_padding == 1 and result.filled_border == 1
    manifest = read_manifest(tmp_path / "out")
    assert [float(r["filled"]) > 0 for r in manifest] == [False, True, True]
    for row in manifest:
        assert (crop_of(tmp_path / "out", row) <= 8).sum() == 0
    assert "Filled windows: 2" in result.summary()


# ------------------------------------------------------------------------------------------ groups


def _grouped_set(tmp_path: Path, with_session: bool) -> Path:
    """2 classes x 6 sessions x 2 micrographs x 2 boxes of tiny micrographs."""
    rows = []
    for ci, label in enumerate(("Alpha", "Beta")):
        for s in range(6):
            for m in range(2):
                name = f"{label[0]}{s}-day_{m}.png"
                Image.fromarray(texture((80, 80), seed=100 * ci + 10 * s + m)).save(tmp_path / name)
                for x in (30, 50):
                    row = {"path": name, "label": label, "x": x, "y": 40}
                    if with_session:
                        row["session"] = f"sess-{label}-{s}"
                    rows.append(row)
    return write_csv(tmp_path / "boxes.csv", rows)


def _assert_groups_kept_together(dataset) -> None:
    where: dict[str, set[str]] = {}
    for name, split in dataset.splits.items():
        assert split.groups is not None, name
        for g in split.groups:
            where.setdefault(g, set()).add(name)
    assert all(len(s) == 1 for s in where.values()), where
    assert sum(len(s) for s in dataset.splits.values()) == 48


def test_manifest_groups_by_session_and_train_keeps_them_together(tmp_path):
    out = tmp_path / "out"
    result = cut_crops(_grouped_set(tmp_path, True), out, size=32, progress=False)
    assert result.groups == 12 and "'session' column" in result.group_source
    manifest = read_manifest(out)
    assert {r["group"] for r in manifest} == {f"sess-{c}-{s}" for c in ("Alpha", "Beta") for s in range(6)}
    for r in manifest:
        stem = Path(r["path"]).stem
        assert stem.startswith(r["group"] + "__") and r["path"].startswith(r["label"] + "/")
        assert r["micrograph"].endswith(".png")
    dataset = load_dataset(out / "manifest.csv", seed=3)
    assert dataset.grouped and dataset.group_by is None
    _assert_groups_kept_together(dataset)
    # The same crops as a class-folder dataset (as a user assembles them): the `<group>__` prefix.
    folders = load_dataset(out, group_by=r"^(.*?)__", seed=3)
    _assert_groups_kept_together(folders)
    assert {g for s in folders.splits.values() for g in s.groups} == {r["group"] for r in manifest}


def test_manifest_groups_by_regex_or_by_micrograph(tmp_path):
    csv_path = _grouped_set(tmp_path, False)
    by_regex = cut_crops(csv_path, tmp_path / "r", size=32, group_by=r"^(.*)_\d+$", progress=False)
    assert by_regex.groups == 12
    assert {r["group"] for r in read_manifest(tmp_path / "r")} == {f"{c}{s}-day" for c in ("A", "B") for s in range(6)}
    _assert_groups_kept_together(load_dataset(tmp_path / "r" / "manifest.csv"))
    by_micrograph = cut_crops(csv_path, tmp_path / "m", size=32, progress=False)
    assert by_micrograph.groups == 24
    for r in read_manifest(tmp_path / "m"):
        assert r["group"] == Path(r["micrograph"]).stem
    with pytest.raises(VirionError, match="does not match group_by"):
        cut_crops(csv_path, tmp_path / "x", size=32, group_by=r"^(\d+)$", progress=False)
    (tmp_path / "s").mkdir()
    session_csv = _grouped_set(tmp_path / "s", True)
    with pytest.raises(VirionError, match="use one of them"):
        cut_crops(session_csv, tmp_path / "y", size=32, group_by=r"^(.*)_\d+$", progress=False)


# ---------------------------------------------------------------------------------------- bad rows


def test_bad_rows_are_reported_one_line_each_not_fatal(tmp_path):
    Image.fromarray(texture((100, 100), seed=5)).save(tmp_path / "m.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "classes.txt").write_text("A\nB\n")
    box = {"path": "m.png", "label": "A", "session": "s1", "xmin": 40, "ymin": 40, "xmax": 60, "ymax": 60}
    rows = [
        box,  # line 2: good
        {**box, "xmin": "abc"},  # 3: unparsable
        {**box, "xmax": 20},  # 4: negative size
        {**box, "path": "nowhere.png"},  # 5: unknown file
        {**box, "label": "Zeta"},  # 6: unknown class
        {**box, "xmin": 300, "xmax": 320},  # 7: outside the image
        {**box, "session": ""},  # 8: no session
        {**box, "path": "broken.png", "session": "s2"},  # 9: unreadable micrograph
        {**box, "xmin": "nan"},  # 10: not a number
        {**box, "label": "B", "ymin": 10, "ymax": 30},  # 11: good
    ]
    write_csv(tmp_path / "boxes.csv", rows)
    result = cut_crops(
        tmp_path / "boxes.csv", tmp_path / "out", size=32, classes=tmp_path / "classes.txt", progress=False
    )
    assert result.total == 2 and result.counts == {"A": 1, "B": 1}
    lines = sorted(result.bad, key=lambda s: int(s.split(" line ")[1].split(":")[0]))
    assert [int(s.split(" line ")[1].split(":")[0]) for s in lines] == [3, 4, 5, 6, 7, 8, 9, 10]
    for word, line in zip(
        ["cannot read the box", "no positive size", "unknown file", "unknown class", "outside the image",
         "no session", "cannot read the micrograph", "cannot read the box"],
        lines,
    ):  # fmt: skip
        assert word in line and line.startswith("boxes.csv line "), line
    written = (tmp_path / "out" / "bad_rows.txt").read_text().splitlines()
    assert sorted(written) == sorted(result.bad)
    assert "Bad rows: 8" in result.summary()


def test_a_csv_without_the_needed_columns_is_one_clear_error(tmp_path):
    (tmp_path / "b.csv").write_text("file,class\nm.png,A\n")
    with pytest.raises(VirionError, match="xmin,ymin,xmax,ymax"):
        cut_crops(tmp_path / "b.csv", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------------------------- background


def test_background_windows_keep_away_from_boxes_padding_and_each_other(tmp_path):
    pixels = texture((300, 360), seed=6)
    pixels[:, 300:] = 0
    Image.fromarray(pixels).save(tmp_path / "m_1.png")
    boxes = [(20, 20, 60, 60), (150, 120, 190, 170), (240, 230, 280, 280), (100, 250, 110, 260)]
    rows = [{"path": "m_1.png", "label": "A", "xmin": a, "ymin": b, "xmax": c, "ymax": d} for a, b, c, d in boxes]
    write_csv(tmp_path / "boxes.csv", rows)
    result = cut_crops(tmp_path / "boxes.csv", tmp_path / "out", size=48, background=12, progress=False)
    manifest = read_manifest(tmp_path / "out")
    bg = [r for r in manifest if r["label"] == BACKGROUND_CLASS]
    assert len(bg) == result.background == result.counts[BACKGROUND_CLASS] >= 4
    valid = ~padding_mask(pixels)
    margin = 16
    windows = []
    for r in bg:
        x, y = float(r["x"]), float(r["y"])
        x0, y0, x1, y1 = x - 24, y - 24, x + 24, y + 24
        windows.append((x0, y0, x1, y1))
        assert x0 >= 0 and y0 >= 0 and x1 <= 360 and y1 <= 300
        assert valid[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))].all()
        for a, b, c, d in boxes:
            overlap = x0 < c + margin and a - margin < x1 and y0 < d + margin and b - margin < y1
            assert not overlap, (r, (a, b, c, d))
        assert float(r["filled"]) == 0.0
        np.testing.assert_array_equal(
            crop_of(tmp_path / "out", r),
            pixels[int(round(y0)) : int(round(y0)) + 48, int(round(x0)) : int(round(x0)) + 48],
        )
    for i, a in enumerate(windows):
        for b in windows[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
    # Repeatable, and the background class is a class for training.
    again = cut_crops(tmp_path / "boxes.csv", tmp_path / "again", size=48, background=12, progress=False)
    assert again.background == result.background
    assert [r["x"] for r in read_manifest(tmp_path / "again")] == [r["x"] for r in manifest]
    dataset = load_dataset(tmp_path / "out" / "manifest.csv", val_fraction=0, test_fraction=0)
    assert BACKGROUND_CLASS in dataset.class_names


def test_background_windows_at_another_scale_stay_inside_and_away(tmp_path):
    pixels = texture((360, 360), seed=10)
    Image.fromarray(pixels).save(tmp_path / "m.png")
    box = (100, 100, 160, 160)
    write_csv(tmp_path / "b.csv", [{"path": "m.png", "label": "A", "xmin": 100, "ymin": 100, "xmax": 160, "ymax": 160}])
    # 0.5 nm/px micrograph, 32-px windows at 1 nm/px: each window covers 64 source px.
    result = cut_crops(tmp_path / "b.csv", tmp_path / "out", size=32, nm_per_px=0.5, background=6, progress=False)
    bg = [r for r in read_manifest(tmp_path / "out") if r["label"] == BACKGROUND_CLASS]
    assert len(bg) == result.background >= 2
    for r in bg:
        x, y = float(r["x"]), float(r["y"])
        assert 32 <= x <= 360 - 32 and 32 <= y <= 360 - 32
        margin = 16 * 2  # 16 target px = 32 source px
        assert (
            x + 32 <= box[0] - margin
            or x - 32 >= box[2] + margin
            or y + 32 <= box[1] - margin
            or (y - 32 >= box[3] + margin)
        )
        assert crop_of(tmp_path / "out", r).shape == (32, 32)


# -------------------------------------------------------------------------------------------- YOLO


def test_yolo_labels(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    pixels = texture((100, 200), seed=7)
    Image.fromarray(pixels).save(images / "a_1.jpg", quality=100)
    decoded = np.asarray(Image.open(images / "a_1.jpg"))
    Image.fromarray(texture((64, 64), seed=8)).save(images / "empty_1.png")
    (tmp_path / "classes.txt").write_text("Alpha\nBeta\n")
    (labels / "a_1.txt").write_text(
        "0 0.5 0.5 0.1 0.2\n1 0.25 0.4 0.05 0.1\n7 0.5 0.5 0.1 0.1\n0 0.5 0.5 -0.1 0.1\nbad line\n"
    )
    (labels / "empty_1.txt").write_text("")
    (labels / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    result = cut_crops(
        yolo=labels, images=images, classes=tmp_path / "classes.txt", out=tmp_path / "out", size=32, progress=False
    )
    assert result.counts == {"Alpha": 1, "Beta": 1}
    assert len(result.bad) == 4 and any("unknown class 7" in b for b in result.bad)
    assert any("orphan.txt" in b and "unknown file" in b for b in result.bad)
    manifest = read_manifest(tmp_path / "out")
    alpha = next(r for r in manifest if r["label"] == "Alpha")
    # centre (100, 50) px -> window [84, 116) x [34, 66)
    np.testing.assert_array_equal(crop_of(tmp_path / "out", alpha), decoded[34:66, 84:116])
    assert alpha["group"] == "a_1" and alpha["micrograph"] == "a_1.jpg"


# --------------------------------------------------------------------------------------------- CLI


def test_cli_end_to_end_and_overwrite_rules(tmp_path, capsys):
    Image.fromarray(texture((200, 200), seed=9)).save(tmp_path / "m_1.png")
    write_csv(tmp_path / "p.csv", [{"path": "m_1.png", "label": "A", "x": 60, "y": 60}])
    out = tmp_path / "crops"
    argv = ["crops", str(tmp_path / "p.csv"), "--out", str(out), "--size", "32", "--background", "2", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "virion crops:" in printed and "Bad rows: 0." in printed and "Background windows: 2" in printed
    assert (out / "A").is_dir() and (out / BACKGROUND_CLASS).is_dir() and len(read_manifest(out)) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".crops")]  # no temporary folder left
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and str(out) in err[0]
    assert main([*argv, "--overwrite"]) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main(["crops", str(tmp_path / "p.csv"), "--out", str(other), "--overwrite", "--quiet"]) == 2
    assert (other / "keep.txt").read_text() == "mine"
    capsys.readouterr()
    assert main(["crops", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x")]) == 2
    assert "missing.csv" in capsys.readouterr().err


# ------------------------------------------------------------------------------- detector windows


def _discs(shape, centres, diameter, seed=0):
    """Stain texture with bright discs of `diameter` px at `centres` (particles the detector can find)."""
    values = texture(shape, seed=seed).astype(float)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for x, y in centres:
        values += 80 / (1 + np.exp((np.hypot(xx - x, yy - y) - diameter / 2) / 2))
    return np.clip(values, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("nm_per_px", [1.0, 0.5])
def test_detected_windows_sit_on_the_detectors_candidates(tmp_path, nm_per_px):
    from virion.micrograph.detect import detect
    from virion.micrograph.scan import resample

    k = 1 / nm_per_px  # source px per target px
    centres = [(90 * k, 80 * k), (230 * k, 110 * k), (150 * k, 240 * k)]
    planted = [(x + 3 * k, y - 2 * k) for x, y in centres]  # the particles sit a few px off the box centres
    debris = [(50 * k, 270 * k), (270 * k, 260 * k), (280 * k, 40 * k)]  # not annotated: hard negatives
    pixels = _discs((int(320 * k), int(320 * k)), planted + debris, 40 * k, seed=3)
    Image.fromarray(pixels).save(tmp_path / "m.png")
    half = 24 * k
    rows = [
        {"path": "m.png", "label": label, "xmin": x - half, "ymin": y - half, "xmax": x + half, "ymax": y + half}
        for label, (x, y) in zip("ABA", centres)
    ]
    write_csv(tmp_path / "b.csv", rows)
    common = dict(size=64, nm_per_px=nm_per_px, progress=False)
    plain = cut_crops(tmp_path / "b.csv", tmp_path / "plain", **common)
    assert plain.detected == 0 and sum(plain.counts.values()) == 3
    result = cut_crops(tmp_path / "b.csv", tmp_path / "out", detected=True, background=2, **common)
    manifest = read_manifest(tmp_path / "out")
    assert [r["x"] for r in manifest[:3]] == [r["x"] for r in read_manifest(tmp_path / "plain")]  # the box windows
    # Every candidate (the detector run at the target scale) inside a box gives a window of that box's class.
    cands = detect(resample(pixels, nm_per_px), 1.0)
    cx, cy = cands.x / nm_per_px, cands.y / nm_per_px
    owner = [
        next((b["label"] for b in rows if b["xmin"] <= x <= b["xmax"] and b["ymin"] <= y <= b["ymax"]), None)
        for x, y in zip(cx, cy)
    ]
    extra = manifest[3 : 3 + result.detected]
    assert result.detected == sum(o is not None for o in owner) >= 3
    assert sorted((float(r["x"]), r["label"]) for r in extra) == sorted(
        (round(float(x), 1), o) for x, o in zip(cx, owner) if o is not None
    )
    for (bx, by), label in zip(centres, "ABA"):  # each particle's own candidate, off its box centre
        near = [r for r in extra if np.hypot(float(r["x"]) - bx, float(r["y"]) - by) <= half / 2]
        assert near and all(r["label"] == label and (float(r["x"]), float(r["y"])) != (bx, by) for r in near)
    assert all(crop_of(tmp_path / "out", r).shape == (64, 64) for r in extra)
    # Background windows are candidates whose centre is in no box.
    bg = [r for r in manifest if r["label"] == BACKGROUND_CLASS]
    assert len(bg) == result.background == 2 == result.counts[BACKGROUND_CLASS]
    for r in bg:
        x, y = float(r["x"]), float(r["y"])
        j = int(np.argmin(np.hypot(cx - x, cy - y)))
        assert np.hypot(cx[j] - x, cy[j] - y) < 0.1 and owner[j] is None
    assert f"Detector windows: {result.detected}" in result.summary()
    # Without background windows asked for, none.
    none = cut_crops(tmp_path / "b.csv", tmp_path / "nobg", detected=True, **common)
    assert none.background == 0 and none.detected == result.detected
    # The CLI's --detected cuts the same windows as the library.
    from virion.cli.main import main

    cli_out = tmp_path / "cli"
    argv = ["crops", str(tmp_path / "b.csv"), "--out", str(cli_out), "--size", "64", "--quiet"]
    assert main([*argv, "--nm-per-px", str(nm_per_px), "--detected", "--background", "2"]) == 0
    assert read_manifest(cli_out) == manifest


def test_crops_write_the_class_sizes_in_nm(tmp_path):
    import json

    Image.fromarray(texture((300, 300), seed=4)).save(tmp_path / "m.png")
    rows = [
        {"path": "m.png", "label": "A", "xmin": 20, "ymin": 20, "xmax": 60, "ymax": 100},  # shorter side 40
        {"path": "m.png", "label": "A", "xmin": 100, "ymin": 100, "xmax": 160, "ymax": 160},  # 60
        {"path": "m.png", "label": "A", "xmin": 200, "ymin": 200, "xmax": 250, "ymax": 250},  # 50
        {"path": "m.png", "label": "B", "xmin": 200, "ymin": 20, "xmax": 220, "ymax": 40},  # 20
    ]
    write_csv(tmp_path / "b.csv", rows)
    cut_crops(tmp_path / "b.csv", tmp_path / "out", size=32, progress=False)
    sizes = json.loads((tmp_path / "out" / "class_sizes.json").read_text())
    assert sizes["unit"] == "nm" and sizes["classes"] == {"A": 50.0, "B": 20.0}  # medians of the shorter sides
    # At 0.5 nm/px the same boxes are half as many nm.
    cut_crops(tmp_path / "b.csv", tmp_path / "half", size=32, nm_per_px=0.5, progress=False)
    assert json.loads((tmp_path / "half" / "class_sizes.json").read_text())["classes"] == {"A": 25.0, "B": 10.0}
