"""Make keras.applications' own custom layers loadable from legacy `.h5` model files.

The `.keras` format records each layer's Python module, so Keras finds ConvNeXt's `LayerScale`
by itself; the legacy `.h5` format records only the class name, which Keras looks up among the
registered custom objects. Registering Keras' own class under that name (nothing is read from
the file but the name) lets the one model loader open the ConvNeXt `.h5` files virion writes,
in safe mode. Import this module before loading (`virion.run.loading` does).
"""

from __future__ import annotations

import keras

try:  # a private path: if a Keras release moves it, only ConvNeXt .h5 files stop loading
    from keras.src.applications.convnext import LayerScale
except ImportError:  # pragma: no cover - depends on the Keras release
    LayerScale = None

if LayerScale is not None:
    keras.saving.get_custom_objects().setdefault("LayerScale", LayerScale)
