"""Grad-CAM: map shape and range, the automatic layer choice on all three architectures,
that the map points at the evidence, the overlay, and the `virion explain` command."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from virion.cli.main import main
from virion.errors import VirionError
from virion.inference.gradcam import find_last_conv_layer, gradcam, overlay


def _check_heatmap(heatmap, shape):
    assert heatmap.shape == shape and heatmap.dtype == np.float32
    assert np.isfinite(heatmap).all()
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0


def test_gradcam_map_at_image_size_in_unit_range(make_tiny_model):
    model = make_tiny_model(32, seed=5)
    assert find_last_conv_layer(model) == "conv_last_relu"
    image = np.random.default_rng(0).integers(0, 255, (50, 60, 3), dtype=np.uint8)
    heatmap, index, confidence = gradcam(model, image)
    _check_heatmap(heatmap, (50, 60))
    probs = model.predict_on_batch(
        np.asarray(Image.fromarray(image).resize((32, 32), Image.BILINEAR))[None].astype("float32")
    )[0]
    assert index == int(np.argmax(probs))
    assert confidence == pytest.approx(float(probs[index]), rel=1e-4)
    assert heatmap.max() == pytest.approx(1.0)  # non-zero gradient: normalized to a peak of 1
    # Another class, a grayscale (H, W) image, and a named layer also work.
    other, other_index, _ = gradcam(model, image[:, :, 0], class_index=(index + 1) % 3, layer_name="conv_a")
    _check_heatmap(other, (50, 60))
    assert other_index == (index + 1) % 3
    with pytest.raises(VirionError, match="not in model"):
        gradcam(model, image, layer_name="nope")


def test_gradcam_points_at_the_evidence():
    """A model whose class-0 score is the mean brightness: the map must light up the bright patch."""
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(
        1,
        1,
        activation="relu",
        name="feat",
        kernel_initializer=keras.initializers.Constant(1 / 765),
        bias_initializer="zeros",
    )(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="out")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("out").set_weights([np.array([[4.0, -4.0]], "float32"), np.zeros(2, "float32")])
    image = np.full((32, 32, 3), 10, np.uint8)
    image[2:10, 20:30] = 250
    heatmap, index, confidence = gradcam(model, image, class_index=0)
    assert index == 0 and 0 < confidence < 1
    inside = heatmap[2:10, 20:30].mean()
    outside = np.delete(heatmap.reshape(-1), np.ravel_multi_index(np.mgrid[2:10, 20:30].reshape(2, -1), (32, 32)))
    assert inside > 0.9 and outside.mean() < 0.2
    # Class 1's evidence is the opposite: its weighted map is negative, so ReLU leaves nothing.
    negative, _, _ = gradcam(model, image, class_index=1)
    assert negative.max() == 0.0


@pytest.mark.parametrize("name,size", [("resnet50", 32), ("densenet121", 32), ("xception", 71)])
def test_gradcam_on_each_architecture(name, size):
    registry = pytest.importorskip("virion.models.registry")
    import keras

    keras.utils.set_random_seed(0)
    model = registry.build_model(name, 3, input_size=size, weights="none")
    expected = registry.model_info(name).last_conv_layer
    assert find_last_conv_layer(model) == expected
    assert find_last_conv_layer(model, preferred=expected) == expected
    image = np.random.default_rng(1).integers(0, 255, (size, size, 3), dtype=np.uint8)
    heatmap, index, confidence = gradcam(model, image)
    _check_heatmap(heatmap, (size, size))
    assert heatmap.max() == pytest.approx(1.0)
    assert 0 <= index < 3 and 0.0 < confidence <= 1.0


def test_overlay_blends_heatmap_over_image():
    image = np.full((20, 30), 100, np.uint8)
    heatmap = np.zeros((10, 15), np.float32)
    heatmap[:5] = 1.0
    blended = overlay(image, heatmap, alpha=0.5)
    assert blended.shape == (20, 30, 3) and blended.dtype == np.uint8
    np.testing.assert_array_equal(overlay(image, heatmap, alpha=0.0), np.repeat(image[:, :, None], 3, axis=2))
    # jet: hot (1.0) is red, cold (0.0) is blue.
    assert blended[2, 5, 0] > blended[2, 5, 2] and blended[18, 5, 2] > blended[18, 5, 0]


def test_cli_explain_writes_one_png_per_image(run_dir, image_dir, tmp_path, capsys):
    out = tmp_path / "cams"
    code = main(
        [
            "explain",
            str(run_dir),
            str(image_dir / "a"),
            str(image_dir / "b" / "deep" / "sixteen.tiff"),
            str(image_dir / "b" / "broken.tif"),
            "--model",
            "tiny",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    pngs = sorted(p.name for p in out.iterdir())
    assert pngs == ["TWO.png", "one.png", "sixteen.png"]
    assert "broken.tif" in captured.out
    with Image.open(out / "one.png") as png:
        assert png.format == "PNG" and png.width > png.height > 100
    # Non-empty folder refused, then allowed with --overwrite; every model of a run, named apart.
    assert main(["explain", str(run_dir), str(image_dir / "a" / "one.png"), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (
        main(
            [
                "explain",
                str(run_dir),
                str(image_dir / "a" / "one.png"),
                "--out",
                str(out),
                "--overwrite",
                "--class",
                "Nipah virus",
            ]
        )
        == 0
    )
    assert {"one_tiny.png", "one_tiny40.png"} <= {p.name for p in out.iterdir()}
    assert (
        main(
            [
                "explain",
                str(run_dir),
                str(image_dir / "a" / "one.png"),
                "--out",
                str(tmp_path / "x"),
                "--class",
                "Measles",
            ]
        )
        == 2
    )
    assert "--class Measles" in capsys.readouterr().err


def test_gradcam_on_another_backend_is_a_clear_error(make_tiny_model, monkeypatch):
    import keras

    model = make_tiny_model(32)
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")  # JAX is supported (tests/distributed)
    with pytest.raises(VirionError, match="TensorFlow and JAX backends"):
        gradcam(model, np.zeros((32, 32, 3), np.uint8))
