"""The built-in synthetic TEM virus dataset: 14 classes drawn from their real morphology under a
negative-stain imaging model. It lets the demo, the tests and new users run the whole pipeline
without downloading anything; it is not a substitute for real micrographs.

    from virion.data.synth import generate_dataset
    generate_dataset("data/synth", per_class=60, seed=0)
"""

from virion.data.synth.morphology import CLASS_NAMES, FIELD_NM
from virion.data.synth.render import render_image
from virion.data.synth.writer import generate_dataset, image_rng, split_counts, to_pixels

__all__ = ["CLASS_NAMES", "FIELD_NM", "generate_dataset", "image_rng", "render_image", "split_counts", "to_pixels"]
