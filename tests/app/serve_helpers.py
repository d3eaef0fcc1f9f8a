"""Helpers for the web page tests: a tiny trained model, test uploads (good and hostile)."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np

CLASSES = ["Adenovirus", "Ebola", "Nipah virus"]
SIZE = 32


def _blob_images(rng, n, kind, size=SIZE):
    """Three easy classes a tiny CNN learns in a few epochs: bright blob, dark blob, bright ring."""
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        if kind == 0:
            img = 60 + 170 * np.exp(-r2 / 30.0)
        elif kind == 1:
            img = 200 - 170 * np.exp(-r2 / 30.0)
        else:
            img = 60 + 170 * np.exp(-((np.sqrt(r2) - 8) ** 2) / 4.0)
        out.append(np.clip(img + rng.normal(0, 6, img.shape), 0, 255))
    return np.stack(out).astype(np.uint8)


def class_image(kind: int, seed: int = 7, size: int = 64) -> np.ndarray:
    """One float image of class `kind` at `size` px (for uploads at another size than the model's)."""
    return _blob_images(np.random.default_rng(seed), 1, kind, size)[0].astype(np.float64) / 255.0


def _tiny_model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="conv_last")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name=f"tiny{seed}")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    return model


def train_tiny(seed: int):
    rng = np.random.default_rng(seed)
    images = np.concatenate([_blob_images(rng, 24, k) for k in range(3)])
    labels = np.repeat(np.arange(3), 24)
    x = np.repeat(images[..., None], 3, axis=3).astype("float32")
    model = _tiny_model(seed)
    model.fit(x, labels, epochs=30, batch_size=24, verbose=0, shuffle=True)
    return model


def write_model(run: Path, name: str, model, accuracy: float, macro_f1: float) -> None:
    folder = run / name
    folder.mkdir(parents=True)
    stem = f"{name}_virus_classification"
    model.save(folder / f"{stem}.keras")
    meta = {
        "model": name,
        "class_names": CLASSES,
        "input_size": SIZE,
        "scaling": "rescale_0_1",
        "weights": "none",
        "stretch": [0.5, 99.5],
        "files": {"keras": f"{stem}.keras"},
    }
    (folder / "metadata.json").write_text(json.dumps(meta))
    (folder / "evaluation").mkdir()
    (folder / "evaluation" / "summary.json").write_text(json.dumps({"accuracy": accuracy, "macro_f1": macro_f1}))


def tiff16_bytes(kind: int = 0, size: int = 64) -> bytes:
    """A 16-bit TIFF with a narrow value range (a naive 8-bit conversion would make it flat)."""
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, (1000 + 3000 * class_image(kind, size=size)).astype(np.uint16))
    return buffer.getvalue()


def png_bytes(kind: int = 1, size: int = 48) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((255 * class_image(kind, seed=3, size=size)).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def huge_png_bytes(width: int = 60000, height: int = 60000) -> bytes:
    """A well-formed PNG whose header declares width x height pixels but carries almost no data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


BAD_UPLOADS = {
    "notes.tif": b"this is a text file, not a TIFF\n" * 4,
    "huge.png": huge_png_bytes(),
    "empty.png": b"",
}
