"""virion.run: the schema, the atomic store, the one loader, and that 0.1 run folders still load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from virion.errors import VirionError
from virion.inference import Classifier
from virion.run import layout, loading, schema, store

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
OLD_RUN = FIXTURES / "run_v0_1"  # written by virion 0.1.0's train_run (see tests/fixtures/README.md)
OLD_IMAGES = FIXTURES / "run_v0_1_images"


def test_a_run_folder_from_release_0_1_loads_and_predicts_as_it_did():
    meta = store.read_metadata(OLD_RUN / "resnet50")
    assert meta.name == "resnet50" and meta.input_size == 32 and len(meta.class_names) == 14
    assert meta.stretch == (0.5, 99.5)  # from the embedded config: 0.1 wrote no top-level key
    assert meta.extra["trained_from_scratch"] is True  # keys the schema does not name are kept
    info = store.read_dataset_info(OLD_RUN)
    assert info.class_names == meta.class_names and info.counts["test"]["Ebola"] == 1
    assert loading.find_model_file(OLD_RUN / "resnet50").name == "resnet50_virus_classification.keras"

    clf = Classifier.load(OLD_RUN)
    assert clf.model_names == ["resnet50"] and clf.input_size == 32
    expected = json.loads((OLD_IMAGES / "expected_v0_1.json").read_text())
    files = [OLD_IMAGES / name for name in expected["files"]]
    got = clf.predict(files)
    # The probabilities that 0.1's `virion predict` computed for these files (saved with the fixture).
    np.testing.assert_allclose(got.probabilities, expected["probabilities"], atol=1e-5)
    h5 = Classifier.load(OLD_RUN / "resnet50" / "resnet50_virus_classification.h5").predict(files)
    np.testing.assert_allclose(h5.probabilities, got.probabilities, atol=1e-5)
    # Grad-CAM works although the recorded last_conv_layer is not in this stand-in model.
    explanation = clf.explain(files[0])
    assert explanation.heatmap.shape == (32, 32) and explanation.layer == "conv_last"


def test_metadata_round_trip_keeps_unknown_keys_and_refuses_newer_schema(tmp_path):
    values = json.loads((OLD_RUN / "resnet50" / "metadata.json").read_text())
    meta = schema.ModelMetadata.from_dict(values)
    again = schema.ModelMetadata.from_dict(json.loads(json.dumps(meta.to_dict())))
    assert again == meta and again.to_dict()["schema_version"] == schema.SCHEMA_VERSION
    assert again.to_dict()["model"] == "resnet50" and again.to_dict()["fine_tuned"] is False
    with pytest.raises(VirionError, match="newer virion"):
        schema.ModelMetadata.from_dict({**values, "schema_version": schema.SCHEMA_VERSION + 1})
    with pytest.raises(VirionError, match="input_size"):
        schema.ModelMetadata.from_dict({**values, "input_size": "big"}, "m/metadata.json")
    store.write_metadata(tmp_path, meta)
    assert store.read_metadata(tmp_path) == meta


def test_write_metadata_from_keywords_as_training_calls_it(tmp_path):
    store.write_metadata(
        tmp_path / "xception",
        class_names=["a", "b"],
        input_size=72,
        config={"stretch": None},
        weights="none",
        model="xception",
        train_seconds=1.23456,
        fine_tuned=True,
    )
    meta = store.read_metadata(tmp_path / "xception")
    assert meta.name == "xception" and meta.stretch is None and meta.train_seconds == 1.235
    assert meta.extra == {"fine_tuned": True} and meta.versions["virion"]


@pytest.mark.parametrize(
    "value, expected",
    [((0.5, 99.5), (0.5, 99.5)), ([1, 99], (1.0, 99.0)), (None, None), ("linear", None), ("none", None), (False, None)],
)
def test_the_one_stretch_parser(value, expected):
    assert schema.parse_stretch(value) == expected


@pytest.mark.parametrize("value", [(99, 1), "wide", [1, 2, 3], (-1, 50)])
def test_bad_stretch_is_one_line_naming_the_file(value):
    with pytest.raises(VirionError, match="^run/config.json: stretch"):
        schema.parse_stretch(value, "run/config.json")


def test_store_writes_are_atomic_and_read_errors_are_one_line(tmp_path, monkeypatch):
    store.write_json(tmp_path / "a.json", {"x": np.float32(1.5), "p": Path("/d"), "t": (1, 2)})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1.5, "p": "/d", "t": [1, 2]}
    store.write_skipped_files(tmp_path, [(Path("bad.tif"), "truncated\nfile")])
    assert store.read_skipped_files(tmp_path) == [("bad.tif", "truncated file")]
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(VirionError, match="broken.json: not readable JSON"):
        store.read_json(tmp_path / "broken.json")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", crash)
    with pytest.raises(OSError):
        store.write_json(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text())["x"] == 1.5  # the old file is whole
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_layout_names_other_data_apart():
    assert layout.evaluation_dir("run/resnet50") == Path("run/resnet50/evaluation")
    assert layout.evaluation_dir("run/resnet50", "/data/TEM virus/") == Path("run/resnet50/evaluation-TEM-virus")
    assert layout.report_file("run", "other") == Path("run/report-other.html")
    assert layout.comparison_stem("other") == "comparison-other"


def test_safe_mode_refuses_a_model_that_runs_code(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
    keras.Model(inputs, outputs).save(tmp_path / "lambda.keras")
    with pytest.raises(VirionError, match="lambda.keras: could not load the model.*safe mode"):
        loading.load_keras_model(tmp_path / "lambda.keras")


def test_load_models_picks_by_name_and_says_what_exists(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    assert [m.name for m in loading.load_models(run, "resnet50")] == ["resnet50"]
    with pytest.raises(VirionError, match="--model xception: not in run .*resnet50"):
        loading.load_models(run, "xception")
    (run / "resnet50" / "resnet50_virus_classification.keras").unlink()
    assert loading.find_model_file(run / "resnet50").suffix == ".h5"  # the .h5 is used when alone
    (run / "resnet50" / "resnet50_virus_classification.h5").unlink()
    with pytest.raises(VirionError, match="did not finish.*--resume"):
        loading.find_model_file(run / "resnet50")
