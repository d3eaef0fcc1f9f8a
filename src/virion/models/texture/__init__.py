"""The texture model: rotation-invariant texture features + a linear or RBF-SVM classifier with
calibrated probabilities, saved as plain arrays and JSON (no pickle). See `model.TextureModel`."""

from virion.models.texture.features import FEATURE_VERSION, cached_features, texture_features
from virion.models.texture.model import TextureModel

__all__ = ["FEATURE_VERSION", "TextureModel", "cached_features", "texture_features"]
