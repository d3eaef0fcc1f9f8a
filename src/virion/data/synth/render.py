"""The negative-stain imaging model: stain background, particles with dark rims, debris, defocus
blur, shot noise and exposure.

Particles exclude the heavy-metal stain, so they look brighter than the dark stain around them,
and stain pools against their edges as a dark rim. `difficulty` scales every nuisance (noise,
blur, background unevenness, clutter) so the same classes can be made easy or hard.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from virion.data.synth.morphology import BUILDERS, FIELD_NM, Grid, Particle, smooth_noise
from virion.errors import VirionError

# Output intensities stay inside 0..1 without per-image min/max stretching, so exposure varies
# from image to image like in a real microscope session.
_STAIN_LEVEL = 0.34


def _particle_patch(shape, p: Particle, s: float):
    """The pixel window a particle can reach and its field there, or None when it is out of view."""
    size_y, size_x = shape
    j0, j1 = max(0, math.floor((p.cx - p.reach) * s)), min(size_x, math.ceil((p.cx + p.reach) * s))
    i0, i1 = max(0, math.floor((p.cy - p.reach) * s)), min(size_y, math.ceil((p.cy + p.reach) * s))
    if j0 >= j1 or i0 >= i1:
        return None
    xs = ((np.arange(j0, j1, dtype=np.float32) + 0.5) / s - p.cx).astype(np.float32)
    ys = ((np.arange(i0, i1, dtype=np.float32) + 0.5) / s - p.cy).astype(np.float32)
    c, sn = math.cos(p.angle), math.sin(p.angle)
    u = xs[None, :] * c + ys[:, None] * sn
    v = ys[:, None] * c - xs[None, :] * sn
    d, tex, halo = p.field(Grid(u, v, xs, ys, s))
    soft = max(1.0, 0.8 / s)  # edge softness in nm: at least one pixel
    alpha = np.clip(0.5 - d / soft, 0.0, 1.0)
    return (slice(i0, i1), slice(j0, j1)), d, tex, halo, alpha


def draw_particle(img: np.ndarray, p: Particle, s: float, mask: np.ndarray | None = None) -> None:
    """Composite one particle into `img` (in place) over the patch it can reach; `mask`, when
    given, gets the particle's coverage (0..1) too."""
    found = _particle_patch(img.shape, p, s)
    if found is None:
        return
    window, d, tex, halo, alpha = found
    patch = img[window]
    patch += alpha * ((p.brightness + tex) - patch)
    if halo is not None:
        patch += halo
    z = (d - p.rim_offset) * (1.0 / p.rim_width)
    patch -= p.rim * np.exp(-z * z)
    if mask is not None:
        np.maximum(mask[window], alpha, out=mask[window])


def _background(rng: np.random.Generator, size: int, s: float, difficulty: float) -> np.ndarray:
    """Uneven stain: a slow thickness gradient, patchy pools and fine granularity.

    Everything here is smooth, so it is built on a 4x coarser grid and upsampled once (speed).
    """
    amp = 0.02 + 0.045 * difficulty
    n = max(8, size // 4)
    low = smooth_noise(rng, (n, n), n / rng.uniform(2, 5))
    mid = smooth_noise(rng, (n, n), 20 * s * n / size)
    gy, gx = rng.normal(0, amp, 2)
    ramp = np.linspace(-0.5, 0.5, n, dtype=np.float32)
    coarse = (_STAIN_LEVEL + rng.normal(0, 0.02)) + amp * (low + 0.4 * mid) + gx * ramp[None, :] + gy * ramp[:, None]
    # real crops carry much of their variance at large scale (measured against real_tem_dev:
    # sd after a 16 px blur 0.099 vs 0.080): deep stain pools and thin, bright patches of stain
    pools = smooth_noise(rng, (n, n), n / rng.uniform(1.5, 3.5))
    coarse += (0.05 + 0.1 * difficulty) * rng.uniform(0.4, 1.0) * np.maximum(pools, -0.5)
    img = Image.fromarray(coarse.astype(np.float32), "F").resize((size, size), Image.BILINEAR)
    return np.array(img, dtype=np.float32)


def _debris(rng: np.random.Generator, difficulty: float) -> list[Particle]:
    """Clutter: protein clumps, stain drops, and small round bits that are not virus particles."""
    out = []
    for _ in range(rng.poisson(1.0 + 4.0 * difficulty)):
        cx, cy = rng.uniform(0, FIELD_NM, 2)
        kind = rng.random()
        if kind < 0.45:  # small bright bit with a rim: too small to be a virus, but close at 2.0
            R = rng.uniform(3, 8 + 3 * difficulty)
            aspect = rng.uniform(1, 2)
            field = lambda g, R=R, a=aspect: (np.hypot(g.u / a, g.v) - R, 0.0, None)  # noqa: E731
            out.append(
                Particle(
                    cx,
                    cy,
                    rng.uniform(0, math.pi),
                    R * aspect + 8,
                    field,
                    rng.uniform(0.5, 0.65),
                    rim=0.1,
                    rim_width=2.0,
                )
            )
        else:  # soft blob, brighter (protein) or darker (stain drop), no sharp edge
            R = rng.uniform(4, 25)
            amp = rng.uniform(0.05, 0.15) * (1 if kind < 0.75 else -1)

            def field(g, R=R, amp=amp):
                r2 = (g.u * g.u + g.v * g.v) * (1.0 / (R * R))
                return np.full_like(g.u, 1e3), 0.0, amp * np.exp(-r2)

            out.append(Particle(cx, cy, 0.0, 2.5 * R, field, 0.0, rim=0.0))
    return out


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with mirrored edges (numpy only; scipy is not a dependency)."""
    if sigma < 0.3:
        return img
    r = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    h, w = img.shape
    p = np.pad(img, ((r, r), (0, 0)), mode="reflect")
    out = k[0] * p[0:h]
    for i in range(1, 2 * r + 1):
        out += k[i] * p[i : i + h]
    p = np.pad(out, ((0, 0), (r, r)), mode="reflect")
    out = k[0] * p[:, 0:w]
    for i in range(1, 2 * r + 1):
        out += k[i] * p[:, i : i + w]
    return out


def render_image(
    class_name: str, rng: np.random.Generator, size: int = 256, difficulty: float = 1.0, *, return_mask: bool = False
):
    """One synthetic negative-stain TEM image of `class_name` as float32 (size, size) in 0..1.

    The field of view is always 256 nm (1 nm per pixel at size 256), so a smaller `size` shows the
    same scene at a coarser pixel size rather than a zoomed-in crop. With `return_mask`, returns
    (image, mask): the virus particles' coverage 0..1 (debris excluded), e.g. to check that every
    crop shows its particle whatever the exposure.
    """
    try:
        build = BUILDERS[class_name]
    except KeyError:
        raise VirionError(f"unknown synthetic class {class_name!r}; choose one of {', '.join(BUILDERS)}") from None
    s = size / FIELD_NM
    img = _background(rng, size, s, difficulty)
    contrast = 1.0 / (1.0 + 0.25 * difficulty)
    mask = np.zeros_like(img) if return_mask else None
    for p in build(rng, difficulty):
        p.brightness = _STAIN_LEVEL + (p.brightness - _STAIN_LEVEL) * contrast
        draw_particle(img, p, s, mask)
    for p in _debris(rng, difficulty):
        draw_particle(img, p, s)
    # fine stain grain is part of the specimen, so it is blurred with it
    half = rng.standard_normal(((size + 1) // 2, (size + 1) // 2), dtype=np.float32)
    img += (0.015 + 0.03 * difficulty) * np.repeat(np.repeat(half, 2, 0), 2, 1)[:size, :size]
    # defocus: real crops are softer than a sharp render (1-3 px band energy 0.015 vs 0.025)
    sigma_nm = rng.uniform(0.8, 1.4) + difficulty * rng.uniform(0.0, 1.4)
    img = gaussian_blur(img, sigma_nm * s)
    # defocus fringes: phase contrast overshoots at every edge, a light halo beside a dark rim
    # (and the reverse on the other side of focus); an unsharp-mask of a few nm is a cheap model
    halo_nm = rng.uniform(3.0, 8.0)
    strength = rng.uniform(-0.15, 0.6) * min(1.0, 0.3 + 0.7 * difficulty)
    img += strength * (img - gaussian_blur(img, halo_nm * s))
    # shot noise: electron counts are Poisson, so the noise grows with the signal. Real crops are
    # resampled to 1 nm/px, which averages the counts: little pixel noise (0.014 vs 0.062 before),
    # slightly correlated over a pixel or two
    noise = 0.008 + 0.016 * difficulty
    shot = rng.standard_normal(img.shape, dtype=np.float32)
    shot = 0.6 * shot + 1.6 * gaussian_blur(shot, 0.8 * max(1.0, s))
    img += (noise / math.sqrt(0.45)) * np.sqrt(np.clip(img, 0.01, None)) * shot
    # exposure: gain and offset, and a gamma that puts most pixels in the dark stain as in real
    # crops (real mean sits at 40% of the 0.5-99.5 percentile range, synthetic was at 47%)
    gain, offset = rng.uniform(0.85, 1.15), rng.normal(-0.03, 0.04)
    img = (img - 0.45) * gain + 0.45 + offset
    np.clip(img, 0.0, 1.0, out=img)
    img **= rng.uniform(1.0, 1.5)
    img = img.astype(np.float32, copy=False)
    return (img, mask) if return_mask else img
