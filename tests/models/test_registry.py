"""The registry: names, file stems, facts per model, and user errors."""

import pytest

from virion.errors import VirionError
from virion.models import catalog, resnet50, transfer, weights
from virion.models.registry import (
    DEFAULT_MODELS,
    MODEL_NAMES,
    build_model,
    model_file_stem,
    model_info,
)


def test_names_and_file_stems():
    # the reference three stay the default; the other backbones are opt-in
    assert DEFAULT_MODELS == ("resnet50", "xception", "densenet121") == MODEL_NAMES[:3]
    assert set(MODEL_NAMES) >= {"densenet201", "efficientnetv2b0", "efficientnetv2s", "convnext_tiny"}
    assert len(set(MODEL_NAMES)) == len(MODEL_NAMES)
    assert [model_file_stem(n) for n in DEFAULT_MODELS] == [
        "resnet50_virus_classification",
        "xception_virus_classification",
        "densenet121_virus_classification",
    ]
    assert model_file_stem("convnext_tiny") == "convnext_tiny_virus_classification"


def test_catalog_covers_every_model_and_every_transfer_model_has_weights():
    assert set(catalog.MIN_INPUT_SIZE) == set(MODEL_NAMES)
    transfer_models = [n for n in MODEL_NAMES if model_info(n).kind == "transfer"]
    assert set(transfer_models) == set(transfer.ARCHS) == set(weights.IMAGENET_WEIGHTS) == set(transfer.PREPROCESSING)
    for name in transfer_models:
        assert transfer.ARCHS[name].min_size == catalog.MIN_INPUT_SIZE[name]
        assert model_info(name).last_conv_layer == transfer.ARCHS[name].last_conv
        assert model_info(name).default_weights == "imagenet" and model_info(name, "none").weights == "none"


@pytest.mark.parametrize(
    "call",
    [
        lambda: build_model("resnet", 3),
        lambda: model_info("vgg16"),
        lambda: model_file_stem("Xception "),
    ],
)
def test_unknown_name_lists_the_valid_ones(call):
    with pytest.raises(VirionError) as err:
        call()
    assert all(name in str(err.value) for name in MODEL_NAMES)
    assert "\n" not in str(err.value)


def test_model_info_facts():
    resnet, xception, densenet = (model_info(n) for n in DEFAULT_MODELS)
    assert (resnet.kind, xception.kind, densenet.kind) == ("scratch", "transfer", "transfer")
    assert resnet.scaling == "x/255"
    assert "127.5" in xception.scaling and "mean/std" in densenet.scaling
    assert (resnet.default_weights, xception.default_weights) == ("none", "imagenet")
    assert not resnet.base_frozen and xception.base_frozen and densenet.base_frozen
    assert xception.weights == "imagenet"
    # weights "none": the base is unfrozen and the metadata must be able to say so
    assert not model_info("xception", "none").base_frozen
    assert not model_info("densenet121", None).base_frozen  # None reads as build_model reads it
    assert model_info("densenet121", "IMAGENET").weights == "imagenet"
    assert model_info("densenet121", "/x/w.h5").base_frozen
    assert model_info("resnet50", "imagenet").weights == "none"  # ignored for the scratch model
    # the extra backbones: scaling as keras.applications preprocesses for each family
    assert "mean/std" in model_info("densenet201").scaling and "mean/std" in model_info("convnext_tiny").scaling
    assert "mean/std" in model_info("efficientnetv2b0").scaling and "128" in model_info("efficientnetv2s").scaling
    assert model_info("convnext_tiny").display_name == "ConvNeXt-Tiny (transfer)"


def test_grad_cam_layers_are_the_builders_own():
    # the transfer and ResNet tests check these layers exist in built models
    assert model_info("resnet50").last_conv_layer == resnet50.LAST_CONV_LAYER == "conv5_block3_out"
    assert model_info("xception").last_conv_layer == transfer.ARCHS["xception"][1] == "block14_sepconv2_act"
    assert model_info("densenet121").last_conv_layer == transfer.ARCHS["densenet121"][1] == "relu"


def test_user_errors():
    with pytest.raises(VirionError, match="at least 2 classes"):
        build_model("resnet50", 1)
    with pytest.raises(VirionError, match="too small for resnet50"):
        build_model("resnet50", 3, input_size=16)
    with pytest.raises(VirionError, match="too small for xception"):
        build_model("xception", 3, input_size=64, weights="none")
    for name in ("densenet201", "efficientnetv2b0", "efficientnetv2s", "convnext_tiny"):
        with pytest.raises(VirionError, match=f"input-size 31 is too small for {name}; use 32"):
            build_model(name, 3, input_size=31, weights="none")
