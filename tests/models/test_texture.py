"""The texture model: features (padding masked), fit/predict, calibration, pickle-free save/load, cache."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from virion.errors import VirionError
from virion.models.texture import features as feat
from virion.models.texture.model import JSON_NAME, NPZ_NAME, TextureModel
from virion.models.texture.svm import RbfSvm

SIZE = 64


def _texture(rng, size=SIZE, grain=1.0, base=130.0, amp=40.0):
    """A stationary texture in 40..220 (never near black): smoothed noise of a given grain."""
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.normal(size=(size, size)), grain)
    noise /= noise.std() + 1e-9
    return np.clip(base + amp * noise, 40, 220).astype(np.uint8)


def _particle(rng, radius, kind="disc", size=SIZE):
    """A bright disc or ring of `radius` px at the centre, on noise."""
    yy, xx = np.indices((size, size))
    r = np.hypot(yy - (size - 1) / 2 + rng.uniform(-1, 1), xx - (size - 1) / 2 + rng.uniform(-1, 1))
    img = 90 + rng.normal(0, 12, (size, size))
    if kind == "disc":
        img += 80 * (r < radius)
    else:
        img += 80 * ((r < radius) & (r > radius - 3))
    return np.clip(img, 20, 235).astype(np.uint8)


def _dataset(rng, per_class):
    specs = [(8, "disc"), (20, "disc"), (18, "ring")]
    images, labels = [], []
    for label, (radius, kind) in enumerate(specs):
        for _ in range(per_class):
            images.append(_particle(rng, radius, kind))
            labels.append(label)
    return np.stack(images), np.array(labels)


# ------------------------------------------------------------------------------------------ features


def test_features_shape_and_finite():
    rng = np.random.default_rng(0)
    padded = _texture(rng)
    padded[:, :20] = 0
    images = np.stack(
        [
            _texture(rng),
            padded,
            np.full((SIZE, SIZE), 128, np.uint8),  # flat
            np.zeros((SIZE, SIZE), np.uint8),  # all black: nothing but "padding"
            _particle(rng, 10),
        ]
    )
    x = feat.texture_features(images, workers=2)
    assert x.shape == (5, len(feat.feature_names(SIZE)))
    assert x.dtype == np.float32
    assert np.isfinite(x).all()
    assert np.array_equal(x, feat.texture_features(images, workers=1))  # threads change nothing


def test_lbp_agrees_with_scikit_image():
    from skimage.feature import local_binary_pattern

    img = _texture(np.random.default_rng(1), grain=1.5)
    for radius in (1, 3):
        ours = feat.lbp_riu2(img.astype(np.float32), radius)
        ref = local_binary_pattern(img, 8, radius, method="uniform").astype(int)
        inner = (slice(radius + 1, -radius - 1),) * 2
        assert (ours[inner] == ref[inner]).mean() > 0.9
        h_ours = np.bincount(ours[inner].ravel(), minlength=10) / ours[inner].size
        h_ref = np.bincount(ref[inner].ravel(), minlength=10) / ref[inner].size
        assert np.abs(h_ours - h_ref).sum() < 0.1


def _padding_shift(size=128, seeds=6, widths=(26, 45), columns=None) -> float:
    """Largest mean shift of any feature when a side of the crop becomes black padding, in units
    of that feature's spread over texture samples (paired over the samples)."""
    rng = np.random.default_rng(2)
    images = []
    for _ in range(seeds):
        texture = _texture(rng, size, grain=1.0)
        for cols in (0, *widths):
            padded = texture.copy()
            padded[:, :cols] = 0
            images.append(padded)
    x = feat.texture_features(np.stack(images)).astype(np.float64).reshape(seeds, 1 + len(widths), -1)
    if columns is not None:
        x = x[..., columns]
    spread = x[:, 0].std(axis=0) + 1e-9
    return max(float((np.abs((x[:, k] - x[:, 0]).mean(axis=0)) / spread).max()) for k in range(1, 1 + len(widths)))


def test_padding_is_masked_not_described(monkeypatch):
    """Blacking out a fifth or a third of a crop shifts no feature systematically.

    Each feature's mean change over six texture samples stays within the natural sample-to-sample
    spread. The control: with the padding mask switched off, the same measure explodes (black
    pixels become zero percentiles, flat LBP codes, GLCM pairs and pyramid edges), so this test
    fails whenever padding leaks into a feature.
    """
    assert _padding_shift() < 2.5
    monkeypatch.setattr(feat, "padding_mask", lambda image, **kw: np.zeros(np.shape(image), bool))
    assert _padding_shift() > 10


def _spectrum_columns(size):
    return [i for i, n in enumerate(feat.feature_names(size)) if n.startswith("spectrum[")]


def test_power_spectrum_finds_the_period_whatever_the_orientation():
    """A grating of period P px peaks in the band holding wavelength P, at any angle."""
    size = 128
    cols = _spectrum_columns(size)
    assert len(cols) == feat.SPECTRUM_BANDS + 1
    shortest, longest = feat.SPECTRUM_WAVELENGTHS_PX
    edges = np.geomspace(1 / longest, 1 / shortest, feat.SPECTRUM_BANDS + 1)
    yy, xx = np.indices((size, size))
    for period in (5.0, 12.0):
        peaks = set()
        for angle in (0.0, 0.5, 1.2):
            wave = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
            image = np.clip(128 + 60 * wave, 0, 255).astype(np.uint8) + 20
            shape = feat.image_features(image)[cols][:-1]  # the last value is the level
            peaks.add(int(np.argmax(shape)))
        assert peaks == {int(np.searchsorted(edges, 1 / period, side="right") - 1)}


def test_power_spectrum_does_not_see_the_padding(monkeypatch):
    """The spectrum alone, as test_padding_is_masked_not_described: masked, a black side shifts it by less than
    its natural spread; unmasked (the control) the black edge dominates it."""
    cols = _spectrum_columns(128)
    assert _padding_shift(columns=cols) < 1.5
    monkeypatch.setattr(feat, "padding_mask", lambda image, **kw: np.zeros(np.shape(image), bool))
    assert _padding_shift(columns=cols) > 5


# ------------------------------------------------------------------------------------------ cache


def test_feature_cache_hit_and_version_key(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    images = np.stack([_texture(rng) for _ in range(4)])
    first = feat.cached_features(images, cache_dir=tmp_path)
    assert list((tmp_path / feat.FEATURE_VERSION).glob("*.npz"))

    def fail(*args, **kwargs):
        raise AssertionError("recomputed features that were cached")

    monkeypatch.setattr(feat, "texture_features", fail)
    again = feat.cached_features(images[::-1], cache_dir=tmp_path)  # any order, same content
    assert np.array_equal(again, first[::-1])
    monkeypatch.setattr(feat, "FEATURE_VERSION", "texture-test-other")
    with pytest.raises(AssertionError, match="recomputed"):
        feat.cached_features(images, cache_dir=tmp_path)


# ------------------------------------------------------------------------------------------ model


def test_rbf_svm_matches_sklearn():
    from sklearn.svm import SVC

    rng = np.random.default_rng(4)
    x = rng.normal(size=(80, 5)) + np.repeat(np.arange(4), 20)[:, None] * 0.8
    y = np.repeat(np.arange(4), 20)
    svc = SVC(C=3.0, gamma=0.3, class_weight="balanced", decision_function_shape="ovo").fit(x, y)
    ours = RbfSvm.from_sklearn(svc)
    test = rng.normal(size=(30, 5)) * 2
    np.testing.assert_allclose(ours.decision_function(test), svc.decision_function(test), rtol=1e-9, atol=1e-9)
    # The pair order and sign: libsvm's votes from our decision values give sklearn's predictions.
    dec, votes, pair = ours.decision_function(test), np.zeros((len(test), 4)), 0
    for i in range(4):
        for j in range(i + 1, 4):
            votes[:, i] += dec[:, pair] > 0
            votes[:, j] += dec[:, pair] <= 0
            pair += 1
    assert np.array_equal(votes.argmax(1), svc.predict(test))


@pytest.mark.parametrize("classifier", ["logistic+lda", "logistic", "svm"])
def test_fit_predict_separable(classifier):
    rng = np.random.default_rng(5)
    x, y = _dataset(rng, 10)
    vx, vy = _dataset(rng, 4)
    tx, ty = _dataset(rng, 5)
    names = ["small", "large", "ring", "never-seen"]
    model = TextureModel(classifier=classifier, input_size=SIZE, cache=False, pool_validation=False)
    model.fit(x, y, class_names=names, val_images=vx, val_labels=vy, progress=False)
    p = model.predict_proba(tx)
    assert p.shape == (len(tx), 4) and p.dtype == np.float64
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    assert (p[:, 3] == 0).all()  # a class without training images gets no probability
    assert (p.argmax(1) == ty).mean() >= 0.9
    assert model.calibration_["fitted_on"] == "validation" and model.temperature_ > 0
    assert model.validation_oof_ is None and not model.pooled_
    assert model.count_params() > 0
    assert np.array_equal(model.predict_proba(tx, tta=True), p)
    profile = model.explain_profile(tx[0])
    assert set(profile["class_profiles"]) == {"small", "large", "ring"}
    assert profile["profile"].shape == profile["radius_px"].shape == profile["class_profiles"]["ring"].shape


def test_grouped_search_and_wrong_inputs(monkeypatch):
    from virion.models.texture import model as texture_model

    monkeypatch.setattr(texture_model, "PAIR_C_GRID", (0.1, 1.0))  # a short search: the search is tested
    monkeypatch.setattr(texture_model, "PAIR_SHRINKAGE_GRID", (0.2,))
    rng = np.random.default_rng(6)
    x, y = _dataset(rng, 8)
    groups = np.arange(len(y)) % 4
    model = TextureModel(input_size=SIZE, cache=False).fit(x, y, class_names=["a", "b", "c"], groups=groups)
    assert set(model.search_) == {"C=0.1,shrinkage=0.2", "C=1,shrinkage=0.2"} and model.C_ in (0.1, 1.0)
    assert model.calibration_["fitted_on"].startswith("out-of-fold scores of the training images (grouped)")
    with pytest.raises(VirionError, match="expects 64x64"):
        model.predict_proba(np.zeros((1, 32, 32), np.uint8))
    with pytest.raises(VirionError, match="fewer than two classes"):
        TextureModel(input_size=SIZE, cache=False).fit(x[:3], [0, 0, 0], class_names=["a", "b"])


@pytest.mark.parametrize("classifier", ["logistic+lda", "svm"])
def test_save_load_same_probabilities_in_a_fresh_process(tmp_path, classifier):
    rng = np.random.default_rng(7)
    x, y = _dataset(rng, 8)
    vx, vy = _dataset(rng, 3)
    model = TextureModel(classifier=classifier, input_size=SIZE, cache=False)
    model.fit(x, y, class_names=["small", "large", "ring"], val_images=vx, val_labels=vy, progress=False)
    files = model.save(tmp_path / "texture")
    assert files == {"texture": JSON_NAME, "arrays": NPZ_NAME}
    test, _ = _dataset(rng, 3)
    np.save(tmp_path / "test.npy", test)
    np.save(tmp_path / "expected.npy", model.predict_proba(test))

    # No pickle anywhere: every array loads with allow_pickle=False and none holds objects.
    with np.load(tmp_path / "texture" / NPZ_NAME, allow_pickle=False) as data:
        assert all(data[k].dtype.kind != "O" for k in data.files)
    with zipfile.ZipFile(tmp_path / "texture" / NPZ_NAME) as zf:
        assert all(name.endswith(".npy") for name in zf.namelist())
    meta = json.loads((tmp_path / "texture" / JSON_NAME).read_text())
    assert meta["class_names"] == ["small", "large", "ring"] and meta["input_size"] == SIZE

    script = (
        "import sys, numpy as np\n"
        "from virion.models.texture.model import TextureModel\n"
        "m = TextureModel.load(sys.argv[1])\n"
        "p = m.predict_proba(np.load(sys.argv[2], allow_pickle=False))\n"
        "np.save(sys.argv[3], p)\n"
    )
    out = tmp_path / "got.npy"
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "texture"), str(tmp_path / "test.npy"), str(out)],
        check=True,
        timeout=120,
    )
    got, expected = np.load(out), np.load(tmp_path / "expected.npy")
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    assert np.array_equal(got.argmax(1), expected.argmax(1))


def test_linear_sum_is_one_linear_map_of_scaled_heads():
    from virion.models.texture.linear import LinearSoftmax

    rng = np.random.default_rng(3)
    x = rng.normal(size=(20, 5))
    a = LinearSoftmax(rng.normal(size=(3, 5)), rng.normal(size=3))
    b = LinearSoftmax(100 * rng.normal(size=(3, 5)), rng.normal(size=3))  # a head on a 100x larger scale
    both = LinearSoftmax.sum([a, b], x)
    q = rng.normal(size=(7, 5))
    expected = a.class_scores(q) / a.class_scores(x).std() + b.class_scores(q) / b.class_scores(x).std()
    np.testing.assert_allclose(both.class_scores(q), expected, rtol=1e-12, atol=1e-12)
    assert both.coef.shape == (3, 5) and both.intercept.shape == (3,)


def test_pooled_validation_trains_on_it_and_keeps_its_out_of_fold_probabilities():
    from sklearn.model_selection import GroupKFold

    from virion.models.texture.calibration import softmax

    rng = np.random.default_rng(9)
    x, y = _dataset(rng, 8)
    vx, vy = _dataset(rng, 4)
    groups = np.arange(len(y)) % 4
    val_groups = 10 + np.arange(len(vy)) % 3
    names = ["small", "large", "ring"]
    model = TextureModel(input_size=SIZE, cache=False, C=0.1, shrinkage=0.2)
    model.fit(x, y, class_names=names, val_images=vx, val_labels=vy, groups=groups, val_groups=val_groups)
    assert model.pooled_ and model.calibration_["fitted_on"].startswith(
        "out-of-fold scores of the training + validation images (grouped)"
    )
    oof = model.validation_oof_
    assert oof.shape == (len(vy), 3)
    np.testing.assert_allclose(oof.sum(axis=1), 1.0, atol=1e-12)
    # The final head trained on the validation images: it is not the one that gave their probabilities.
    assert not np.allclose(np.log(oof + 1e-300), np.log(model.predict_proba(vx) + 1e-300), atol=1e-3)
    # Each validation row's probabilities come from a head fitted without its micrograph (grouped folds).
    pool_x = np.vstack([model.features(x), model.features(vx)]).astype(np.float64)
    pool_y = np.concatenate([y, vy])
    z = (pool_x - model.mean_) / model.scale_
    pool_groups = np.concatenate([groups, val_groups]).astype(str)
    for train, test in GroupKFold(n_splits=3).split(z, pool_y, pool_groups):
        head = model._train_head(z[train], pool_y[train], model.C_, model.gamma_)
        rows = test[test >= len(y)]
        expected = softmax(head.class_scores(z[rows]), model.temperature_)
        np.testing.assert_allclose(oof[rows - len(y)], expected, atol=1e-9)
    # Without the validation images' groups the pooled folds could split a micrograph: no grouped search.
    ungrouped = TextureModel(input_size=SIZE, cache=False).fit(
        x, y, class_names=names, val_images=vx, val_labels=vy, groups=groups
    )
    assert ungrouped.search_ == {} and "(not grouped)" in ungrouped.calibration_["fitted_on"]


def test_pooled_out_of_fold_marks_images_whose_class_its_split_never_saw():
    """A class whose images all sit in one micrograph: its out-of-fold classifier never saw it, so those
    validation rows are not fair predictions and are marked, not scored."""
    rng = np.random.default_rng(11)
    x, y = _dataset(rng, 8)
    vx, vy = _dataset(rng, 4)
    groups = np.where(y == 2, 0, 1 + np.arange(len(y)) % 3)  # every "ring" image in micrograph 0
    val_groups = np.where(vy == 2, 0, 10 + np.arange(len(vy)) % 3)
    model = TextureModel(input_size=SIZE, cache=False, C=0.1, shrinkage=0.2)
    model.fit(
        x, y, class_names=["small", "large", "ring"], val_images=vx, val_labels=vy, groups=groups, val_groups=val_groups
    )
    assert model.pooled_
    np.testing.assert_array_equal(model.validation_oof_fair_, vy != 2)


def test_load_refuses_mismatched_or_stale_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(8)
    x, y = _dataset(rng, 5)
    folder = tmp_path / "m"
    TextureModel(input_size=SIZE, cache=False).fit(x, y, class_names=["a", "b", "c"], progress=False).save(folder)
    TextureModel.load(folder / JSON_NAME)  # the json file itself works too
    monkeypatch.setattr(feat, "FEATURE_VERSION", "texture-future")
    with pytest.raises(VirionError, match="retrain"):
        TextureModel.load(folder)
    monkeypatch.undo()
    npz = folder / NPZ_NAME
    npz.write_bytes(npz.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(VirionError, match="does not match"):
        TextureModel.load(folder)
    with pytest.raises(VirionError, match="no texture model"):
        TextureModel.load(tmp_path / "nowhere")
