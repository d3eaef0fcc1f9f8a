"""Prediction on new images: inputs, decoding formats, unreadable files, TTA, ensemble, CSV, CLI."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from virion.cli.main import main
from virion.data.decode import decode_rgb
from virion.errors import VirionError
from virion.inference import Classifier
from virion.inference.batching import dihedral_views
from virion.inference.inputs import collect_inputs
from virion.inference.predict import format_table, write_csv
from virion.run.loading import load_models as load_predictor


@pytest.fixture(scope="module")
def models(run_dir):
    return load_predictor(run_dir)


@pytest.fixture(scope="module")
def clf(run_dir):
    return Classifier.load(run_dir)


def by_source(predictions):
    """{source: probabilities} of one Predictions."""
    return {s: p for s, p in zip(predictions.sources, predictions.probabilities)}


@pytest.fixture(scope="module")
def files(image_dir):
    return collect_inputs([image_dir])


def test_collect_inputs_recursive_sorted_skips_hidden_and_non_images(image_dir, files):
    names = [f.relative_to(image_dir).as_posix() for f in files]
    assert names == ["a/TWO.PNG", "a/one.png", "b/broken.tif", "b/deep/sixteen.tiff", "b/eight.tif"]
    # A file named directly is kept; the same file twice is predicted once.
    direct = collect_inputs([image_dir / "a" / "one.png", image_dir / "a" / "one.png"])
    assert direct == [image_dir / "a" / "one.png"]
    with pytest.raises(VirionError, match="missing"):
        collect_inputs([image_dir / "missing"])


def test_load_run_folder_gives_every_model_with_metadata(run_dir, models, class_names):
    assert [m.name for m in models] == ["tiny", "tiny40"]
    assert [m.input_size for m in models] == [32, 40]
    assert all(m.class_names == class_names for m in models)
    assert models[0].decode.size == 32 and models[0].decode.stretch == (0.5, 99.5)
    assert models[0].source.suffix == ".keras"
    only = load_predictor(run_dir, "tiny40")
    assert [m.name for m in only] == ["tiny40"]
    with pytest.raises(VirionError, match="--model nope"):
        load_predictor(run_dir, "nope")


def test_stretch_comes_from_metadata(tmp_path, make_tiny_model, save_model, class_names):
    folder = save_model(make_tiny_model(32), tmp_path / "m", "m", class_names, 32, stretch=None)
    assert load_predictor(folder)[0].decode.stretch is None
    meta = json.loads((folder / "metadata.json").read_text())
    meta.pop("stretch")
    meta["config"] = {"stretch": [1, 99]}
    (folder / "metadata.json").write_text(json.dumps(meta))
    assert load_predictor(folder)[0].decode.stretch == (1.0, 99.0)


def test_missing_or_bad_metadata_is_a_clear_error(tmp_path, run_dir):
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(run_dir / "tiny" / "tiny_virus_classification.h5", lone / "model.h5")
    with pytest.raises(VirionError, match=r"model\.h5.*metadata\.json.*class_names"):
        load_predictor(lone / "model.h5")
    (lone / "metadata.json").write_text(json.dumps({"class_names": ["a", "b"], "input_size": 32}))
    with pytest.raises(VirionError, match="3 outputs.*2 class_names"):
        load_predictor(lone / "model.h5")
    (tmp_path / "nothing_here").mkdir()
    with pytest.raises(VirionError, match="no model found"):
        load_predictor(tmp_path / "nothing_here")


def test_predict_formats_and_unreadable_file_not_fatal(clf, models, files, image_dir):
    model = models[0]
    result = clf.predict(files, model="tiny")
    assert [f.rsplit("/", 1)[-1] for f, _ in result.failures] == ["broken.tif"]
    assert result.failures[0][1].strip()  # a reason is given
    assert [s.rsplit("/", 1)[-1] for s in result.sources] == ["TWO.PNG", "one.png", "sixteen.tiff", "eight.tif"]
    for source, probs, top in zip(result.sources, result.probabilities, result.top_k(2)):
        # The prediction is the model applied to the training decoder's output (16-bit TIFF included).
        expected = model.model.predict_on_batch(decode_rgb(source, model.decode)[None].astype("float32"))[0]
        np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-6)
        assert top[0][0] == model.class_names[int(np.argmax(expected))]
        assert top[0][1] == pytest.approx(float(expected.max()), rel=1e-4)
        assert len(top) == 2 and top[0][1] >= top[1][1]
    assert result.predicted == [t[0][0] for t in result.top_k(1)]
    table = format_table([result])
    assert "sixteen.tiff" in table and "broken.tif" in table and "unreadable" in table


def test_arrays_and_pil_images_decode_exactly_as_their_files(clf, image_dir, tmp_path):
    """uint8, uint16, float and RGB arrays, and PIL images: the same answer as the same pixels in a file."""
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(5)
    gray8 = rng.integers(0, 255, (50, 70), dtype=np.uint8)
    gray16 = (1000 + 20 * rng.integers(0, 150, (45, 45))).astype(np.uint16)
    rgb = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    floats = rng.uniform(-1.0, 3.0, (36, 36)).astype(np.float32)
    tifffile.imwrite(tmp_path / "g8.tif", gray8)
    tifffile.imwrite(tmp_path / "g16.tif", gray16)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "f.tif", floats)
    from_files = clf.predict([tmp_path / n for n in ("g8.tif", "g16.tif", "rgb.tif", "f.tif")], model="tiny")
    from_arrays = clf.predict([gray8, gray16, rgb, floats], model="tiny")
    assert from_arrays.sources == ["array[0]", "array[1]", "array[2]", "array[3]"]
    np.testing.assert_allclose(from_arrays.probabilities, from_files.probabilities, atol=1e-6)
    # A PIL image and a (N, H, W) batch take the same path.
    pil = clf.predict(Image.fromarray(gray8), model="tiny")
    np.testing.assert_allclose(pil.probabilities[0], from_files.probabilities[0], atol=1e-6)
    batch = clf.predict(np.stack([gray8, gray8[::-1]]), model="tiny")
    assert batch.probabilities.shape == (2, 3)
    np.testing.assert_allclose(batch.probabilities[0], from_files.probabilities[0], atol=1e-6)
    # decode() shows what the model sees.
    seen = clf.decode([gray8, tmp_path / "g8.tif"], model="tiny40")
    assert seen.shape == (2, 40, 40) and seen.dtype == np.uint8 and np.array_equal(seen[0], seen[1])
    with pytest.raises(VirionError, match="not an image"):
        clf.predict([{"a": 1}])


def test_sixteen_bit_tiff_is_stretched_not_saturated(models, image_dir):
    image = decode_rgb(image_dir / "b" / "deep" / "sixteen.tiff", models[0].decode)
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
    assert image.min() < 30 and image.max() > 225


def test_h5_and_keras_give_the_same_predictions(run_dir, files):
    a = Classifier.load(run_dir / "tiny" / "tiny_virus_classification.keras").predict(files)
    b = Classifier.load(run_dir / "tiny" / "tiny_virus_classification.h5").predict(files)
    assert a.predicted == b.predicted
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)


def test_tta_is_a_distribution_and_invariant_to_dihedral_turns(models, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (32, 32), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    Image.fromarray(np.rot90(image).copy()).save(tmp_path / "x_rot.png")
    Image.fromarray(image[:, ::-1].copy()).save(tmp_path / "x_flip.png")
    files = sorted(tmp_path.glob("*.png"))
    clf = Classifier(models[:1])
    plain = clf.predict(files, tta=False)
    tta = clf.predict(files, tta=True)
    probs = tta.probabilities
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs >= 0).all()
    # Averaging over the whole dihedral group makes the answer independent of orientation...
    np.testing.assert_allclose(probs[1:], np.repeat(probs[:1], 2, axis=0), atol=1e-5)
    # ...which the un-augmented model is not.
    plain_probs = plain.probabilities
    assert not np.allclose(plain_probs[0], plain_probs[1], atol=1e-5)


def test_dihedral_views_are_the_eight_distinct_symmetries():
    batch = np.arange(2 * 3 * 3 * 1).reshape(2, 3, 3, 1)
    views = dihedral_views(batch)
    assert len(views) == 8
    assert len({v.tobytes() for v in views}) == 8


def test_ensemble_averages_models_and_needs_same_classes(clf, models, files, tmp_path, make_tiny_model, save_model):
    single = clf.predict_each(files)
    ensemble = clf.predict(files, model="ensemble")
    assert [p.model for p in single] == ["tiny", "tiny40"] and ensemble.model == "ensemble"
    assert clf.predict(files).model == "ensemble"  # the default with several models
    assert len(ensemble.sources) == len(single[0].sources)
    np.testing.assert_allclose(ensemble.probabilities, np.mean([p.probabilities for p in single], axis=0), atol=1e-6)
    other = save_model(make_tiny_model(32), tmp_path / "other", "other", ["x", "y", "z"], 32)
    with pytest.raises(VirionError, match="ensemble.*different class lists"):
        Classifier(models + load_predictor(other)).predict(files, model="ensemble")


def test_batches_give_the_same_answer_as_one_batch(clf, files):
    big = clf.predict_each(files, batch_size=64)
    small = clf.predict_each(files, batch_size=2)
    for a, b in zip(big, small):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
        assert a.failures == b.failures


def test_csv_lines_up_with_files(clf, models, files, tmp_path):
    result = clf.predict_each(files)
    path = write_csv(result, tmp_path / "out" / "p.csv", top_k=3)
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [
        "file",
        "class",
        "probability",
        "model",
        "top1_class",
        "top1_probability",
        "top2_class",
        "top2_probability",
        "top3_class",
        "top3_probability",
        "error",
    ]
    readable = [f for f in files if f.name != "broken.tif"]
    assert [r["file"] for r in rows if not r["error"]] == [str(f) for f in readable for _ in models]
    assert [r["file"] for r in rows] == [str(f) for f in files for _ in (models if f.name != "broken.tif" else [0])]
    broken = next(r for r in rows if r["error"])
    assert broken["file"].endswith("broken.tif") and broken["class"] == ""
    by_key = {(s, p.model): row for p in result for s, row in zip(p.sources, p.probabilities)}
    for r in rows:
        if r["error"]:
            continue
        probs = by_key[(r["file"], r["model"])]
        assert r["class"] == r["top1_class"] == clf.class_names[int(np.argmax(probs))]
        assert float(r["probability"]) == pytest.approx(float(probs.max()), abs=1e-6)
        assert float(r["top1_probability"]) >= float(r["top2_probability"]) >= float(r["top3_probability"])
    # Predictions.to_rows gives the very rows of the CSV for one model.
    one = result[0].to_rows(3)
    assert [r["file"] for r in one] == [r["file"] for r in rows if r["model"] in ("tiny", "")]


def test_cli_predict_writes_csv_and_refuses_overwrite(run_dir, image_dir, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    code = main(["predict", str(run_dir), str(image_dir), "--model", "tiny", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0
    assert "broken.tif" in captured.out and "sixteen.tiff" in captured.out
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5 and {r["model"] for r in rows if not r["error"]} == {"tiny"}
    before = out.read_text()
    assert main(["predict", str(run_dir), str(image_dir), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == before
    assert (
        main(
            [
                "predict",
                str(run_dir),
                str(image_dir),
                "--out",
                str(out),
                "--overwrite",
                "--ensemble",
                "--tta",
                "--top-k",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["model"] for r in rows if not r["error"]} == {"ensemble"} and "top3_class" not in rows[0]


def test_cli_predict_errors_are_one_line(run_dir, image_dir, tmp_path, capsys):
    assert main(["predict", str(run_dir), str(image_dir / "b" / "broken.tif")]) == 2
    err = capsys.readouterr().err
    assert "could be read" in err and len(err.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(run_dir), str(empty)]) == 2
    assert "no image files" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nothing"), str(image_dir)]) == 2
    assert "no such file" in capsys.readouterr().err
