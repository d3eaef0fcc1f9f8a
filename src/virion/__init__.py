"""virion: classify virus particles in TEM images with deep learning."""

import os as _os

# Quiet TensorFlow's C++ start-up chatter before any backend is imported; users can override.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"
