"""The reference project's input pipeline, re-implemented faithfully for side-by-side benchmarks.

The reference trained on `ImageDataGenerator(...).flow_from_directory(...)` from Keras 2: every
epoch re-reads and re-decodes each file with Pillow, converts it to RGB (clipping 16-bit TIFFs),
resizes it, then rotates, shifts and flips it in separate scipy passes, on three channels, in
one Python thread. Its validation subset came from the same augmenting generator (a defect
virion does not copy; reproduced here only so timings compare like with like).

Needs the Keras 2 API (`pip install tf_keras`, the `bench` extra); used by bench_pipeline.py and
bench_train.py, never by the library.
"""

from __future__ import annotations

from pathlib import Path

REFERENCE_SETTINGS = dict(
    rescale=1.0 / 255,
    rotation_range=20,
    width_shift_range=0.2,
    height_shift_range=0.2,
    horizontal_flip=True,
    validation_split=0.2,
)


def reference_iterator(
    data_dir, *, subset: str = "training", target_size=(128, 128), batch_size: int = 64, seed: int | None = None
):
    """`flow_from_directory(DATA/train, ...)` exactly as the reference built it.

    `subset` is "training" (80%) or "validation" (20%, augmented like the reference did). Yields
    (float32 (B, H, W, 3) in 0..1, float32 one-hot (B, C)) forever; `len(it)` batches per epoch.
    """
    try:
        from tf_keras.preprocessing.image import ImageDataGenerator
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "the reference pipeline needs Keras 2: pip install tf_keras (or pip install -e '.[bench]')"
        ) from exc
    generator = ImageDataGenerator(**REFERENCE_SETTINGS)
    return generator.flow_from_directory(
        str(Path(data_dir) / "train"),
        target_size=tuple(target_size),
        batch_size=batch_size,
        class_mode="categorical",
        subset=subset,
        seed=seed,
    )
