"""Black padding: the near-zero border regions added when a small micrograph was padded to size.

Many published micrographs were padded with black to a fixed size, and how much depends on the
class: a cue no real micrograph carries. Crops, features and detection mask it rather than
describe it; this is the one place that says what padding is.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Padding is exact black; JPEG leaves a few grey levels of ringing along its edge.
PADDING_LEVEL = 8
# A dark region touching the border is padding only when it is large (a thin dark stain rim is not).
MIN_PADDING_PIXELS = 400
# Grow the mask over the JPEG ringing at the padding's edge.
EDGE_PIXELS = 2


def padding_mask(image: np.ndarray, *, level: int = PADDING_LEVEL, min_pixels: int = MIN_PADDING_PIXELS) -> np.ndarray:
    """True where `image` (2-D, uint8 or uint16) is black padding: large near-zero regions touching the border.

    Pixels at or below `level` (scaled by the dtype: 8 of 255) that are connected to the image
    border and form a region of at least `min_pixels` pixels, grown by EDGE_PIXELS.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"padding_mask takes a 2-D grayscale image, got shape {image.shape}")
    scale = 257 if image.dtype == np.uint16 else 1
    dark = image <= level * scale
    if not dark.any():
        return np.zeros(image.shape, dtype=bool)
    labels, count = ndimage.label(dark)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    border = border[border > 0]
    if border.size == 0:
        return np.zeros(image.shape, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = border[sizes[border] >= min_pixels]
    mask = np.isin(labels, keep)
    if mask.any() and EDGE_PIXELS:
        mask = ndimage.binary_dilation(mask, iterations=EDGE_PIXELS)
    return mask
