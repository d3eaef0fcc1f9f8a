"""Model names and input-size limits as plain data, importable without Keras.

The CLI and the training config validate `--models` and `--input-size` from here before any
backend is imported; `virion.models.registry` builds the models and reads the same names.
"""

from __future__ import annotations

# The reference system's three models: what `virion train` and `virion demo` train by default.
DEFAULT_MODELS = ("resnet50", "xception", "densenet121")
# Further keras.applications backbones with the same head and stages, trained only when named in
# --models: DenseNet201 (the public dataset's published anchors), EfficientNetV2 B0/S, ConvNeXt Tiny.
EXTRA_MODELS = ("densenet201", "efficientnetv2b0", "efficientnetv2s", "convnext_tiny")
# Networks built for TEM crops and trained from scratch (no ImageNet weights): tem_cnn, the compact CNN.
COMPACT_MODELS = ("tem_cnn",)
# Models that are not Keras networks: fitted by their own code (virion.training.texture_fit), decoded
# at their own fixed input size whatever --input-size says (FIXED_INPUT_SIZE), with no Grad-CAM.
CLASSICAL_MODELS = ("texture",)
FIXED_INPUT_SIZE = {"texture": 256}
MODEL_NAMES = DEFAULT_MODELS + EXTRA_MODELS + COMPACT_MODELS + CLASSICAL_MODELS
# Models that always start from random initialization (`--weights` does not apply to them).
SCRATCH_MODELS = ("resnet50",) + COMPACT_MODELS + CLASSICAL_MODELS

# Smallest square input each architecture accepts (keras.applications: Xception 71, DenseNet,
# EfficientNetV2 and ConvNeXt 32; our ResNet-50's five stride-2 stages need 32).
MIN_INPUT_SIZE = {
    "resnet50": 32,
    "xception": 71,
    "densenet121": 32,
    "densenet201": 32,
    "efficientnetv2b0": 32,
    "efficientnetv2s": 32,
    "convnext_tiny": 32,
    "tem_cnn": 32,
    "texture": 8,  # any --input-size: the texture model decodes at its own FIXED_INPUT_SIZE
}
