"""Black padding is found where it is, and nowhere else (dark stain inside the image is not padding)."""

import numpy as np

from virion.data.padding import padding_mask


def _padded(rng):
    image = rng.integers(60, 200, size=(120, 140)).astype(np.uint8)
    image[:30] = rng.integers(0, 4, size=(30, 140))  # JPEG-like near-black padding on top
    image[:, 120:] = 0  # exact black on the right
    image[60:70, 50:60] = 0  # a dark blob inside: not padding
    image[80:83, 0:3] = 0  # a tiny dark corner touching the border: too small to be padding
    return image


def test_padding_is_the_large_dark_border_regions_only():
    image = _padded(np.random.default_rng(0))
    mask = padding_mask(image)
    assert mask[:30].all() and mask[:, 120:].all()
    assert not mask[60:70, 50:60].any()
    assert not mask[80:83, 0:3].any()
    assert not mask[40:100, 10:110].any()


def test_no_padding_and_16_bit():
    rng = np.random.default_rng(1)
    assert not padding_mask(rng.integers(50, 255, size=(64, 64)).astype(np.uint8)).any()
    image = _padded(rng).astype(np.uint16) * 257
    assert padding_mask(image)[:30].all()
