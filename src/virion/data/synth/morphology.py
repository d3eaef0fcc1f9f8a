"""Per-class particle shapes and surface textures, in nanometres (the field of view is 256 nm).

Each class builder returns the particles of one image as `Particle` objects: a position, a
reach (for the bounding patch) and a `field` that maps coordinates to a signed distance to the
particle surface, a brightness offset inside it and a spike fringe outside it. The imaging model
(stain, rims, blur, noise) lives in `render.py`; this module only knows what viruses look like.

Sizes follow the TEM virus dataset (about 1 nm per pixel at 256 px). Confusable classes share
sizes on purpose (astro/noro; the enveloped spheres; Ebola/Marburg) and differ only in subtle
surface cues or in how often each shape occurs, so that accuracy on this data means something.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image

FIELD_NM = 256.0
TAU = 2.0 * math.pi

CLASS_NAMES = (
    "Adenovirus",
    "Astrovirus",
    "CCHF",
    "Cowpox",
    "Ebola",
    "Influenza",
    "Lassa",
    "Marburg",
    "Nipah virus",
    "Norovirus",
    "Orf",
    "Papilloma",
    "Rift Valley",
    "Rotavirus",
)


class Grid(NamedTuple):
    """Coordinates of one patch: `u`, `v` (2-D, particle frame, nm), `xs`, `ys` (1-D, unrotated,
    relative to the particle centre, nm) and `s` (pixels per nm)."""

    u: np.ndarray
    v: np.ndarray
    xs: np.ndarray
    ys: np.ndarray
    s: float


Field = Callable[[Grid], "tuple[np.ndarray, np.ndarray | float, np.ndarray | None]"]


@dataclass
class Particle:
    """One particle; `field(grid) -> (signed distance nm, inner brightness offset, fringe or None)`."""

    cx: float
    cy: float
    angle: float
    reach: float
    field: Field
    brightness: float = 0.64
    rim: float = 0.16  # stain pooled against the particle edge
    rim_offset: float = 1.5  # nm outside the surface where the pooled stain peaks
    rim_width: float = 3.0


# ----------------------------------------------------------------------------- small helpers


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell_px: float) -> np.ndarray:
    """Unit-variance noise with features about `cell_px` pixels wide (bicubic-upsampled grid)."""
    h, w = shape
    gh, gw = max(2, int(h / max(cell_px, 1.0)) + 2), max(2, int(w / max(cell_px, 1.0)) + 2)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    up = np.asarray(Image.fromarray(coarse, "F").resize((w, h), Image.BICUBIC), dtype=np.float32)
    return up / (up.std() + 1e-6)


def hex_lattice(u, v, spacing: float, phase=(0.0, 0.0, 0.0)):
    """Triangular lattice of bumps (capsomeres): three plane waves 60 degrees apart, 0..1."""
    k = 4.0 * math.pi / (math.sqrt(3.0) * spacing)
    h = 0.5 * math.sqrt(3.0)
    t = np.cos(k * u + phase[0]) + np.cos(k * (-0.5 * u + h * v) + phase[1]) + np.cos(k * (-0.5 * u - h * v) + phase[2])
    return (t + 1.5) * (1.0 / 4.5)


def polygon_sdf(r, phi, n: int, radius: float):
    """Distance to a regular n-gon (circumradius `radius`, a vertex on the +u axis)."""
    sector = TAU / n
    a = np.mod(phi, sector) - 0.5 * sector
    return r * np.cos(a) - radius * math.cos(math.pi / n)


def ellipse_sdf(u, v, a: float, b: float):
    """Approximate signed distance to an ellipse with half-axes a (u) and b (v)."""
    k0 = np.hypot(u / a, v / b)
    k1 = np.hypot(u / (a * a), v / (b * b))
    ratio = np.clip(k0 / (k1 + 1e-12), min(a, b), max(a, b))
    return (k0 - 1.0) * ratio


def box_sdf(u, v, hx: float, hy: float, corner: float):
    """Signed distance to a rounded rectangle of half-extents hx, hy."""
    qx = np.abs(u) - hx + corner
    qy = np.abs(v) - hy + corner
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - corner


def capsule_sdf(u, v, half_len: float, radius: float):
    """Signed distance to a stadium (a rod with round caps) along the u axis."""
    du = np.maximum(np.abs(u) - half_len, 0)
    return np.hypot(du, v) - radius


def wobble(rng: np.random.Generator, amp: float, kmin: int = 2, kmax: int = 4):
    """A random smooth outline perturbation `f(phi)` (relative radius change) for pleomorphic shapes."""
    ks = list(range(kmin, kmax + 1))
    # plain Python numbers: numpy float64 scalars would silently promote the float32 grids to float64
    a = [float(x) / math.sqrt(k - kmin + 1) for x, k in zip(rng.normal(0.0, amp, len(ks)), ks)]
    p = [float(x) for x in rng.uniform(0, TAU, len(ks))]

    def f(phi):
        out = 0.0
        for k, ak, pk in zip(ks, a, p):
            out = out + ak * np.cos(k * phi + pk)
        return out

    return f


def fringe(d, arc, length: float, period: float, contrast: float):
    """A band of radial spikes just outside the surface: bright spikes with stain between them."""
    band = np.clip(d, 0.0, 1.0) * np.clip((length - d) * 0.5, 0.0, 1.0)
    spikes = 0.5 + 0.5 * np.cos(arc * (TAU / period))
    return (contrast * band) * (spikes * spikes)


def jitter(difficulty: float) -> float:
    """How much of each class's natural size spread to use: less when easy, more when hard."""
    return 0.4 + 0.6 * difficulty


def scatter(rng: np.random.Generator, n: int, radius: float, *, cluster: float = 0.5):
    """Centres for n particles of one radius: the first near the middle (crops are centred on an
    annotated particle), the rest clustered or spread, some cut by the crop edge, few overlapping."""
    pts = [(FIELD_NM / 2 + rng.normal(0, 8), FIELD_NM / 2 + rng.normal(0, 8))]
    clustered = rng.random() < cluster
    for _ in range(n - 1):
        for _try in range(15):
            if clustered:
                bx, by = pts[rng.integers(len(pts))]
                ang = rng.uniform(0, TAU)
                dist = 2 * radius * rng.uniform(1.0, 1.15)
                x, y = bx + dist * math.cos(ang), by + dist * math.sin(ang)
            else:
                x, y = rng.uniform(-0.3 * radius, FIELD_NM + 0.3 * radius, 2)
            if all((x - px) ** 2 + (y - py) ** 2 >= (1.9 * radius) ** 2 for px, py in pts):
                pts.append((float(x), float(y)))
                break
    return pts


def _polar(g: Grid):
    return np.hypot(g.u, g.v), np.arctan2(g.v, g.u)


# ----------------------------------------------------------------------------- small icosahedral


def adenovirus(rng, difficulty):
    """~90 nm icosahedron seen as a hexagon with a lattice of capsomeres (hexons ~9 nm apart)."""
    particles = []
    n = 1 + rng.binomial(3, 0.35)
    base = 90.0 * (1 + 0.04 * jitter(difficulty) * rng.standard_normal())
    for cx, cy in scatter(rng, n, base / 2, cluster=0.4):
        R = 0.5 * base * (1 + 0.025 * rng.standard_normal()) / math.cos(math.pi / 12)
        spacing = R / 5.3
        phase = tuple(float(x) for x in rng.uniform(0, TAU, 3))
        roundness = rng.uniform(0.1, 0.35)
        contrast = rng.uniform(0.13, 0.2)

        def field(g, R=R, spacing=spacing, phase=phase, roundness=roundness, contrast=contrast):
            r, phi = _polar(g)
            d = (1 - roundness) * polygon_sdf(r, phi, 6, R) + roundness * (r - 0.93 * R)
            tex = contrast * (hex_lattice(g.u, g.v, spacing, phase) - 0.5)
            return d, tex, None

        particles.append(Particle(cx, cy, rng.uniform(0, TAU), R + 8, field, rng.uniform(0.6, 0.7)))
    return particles


def papilloma(rng, difficulty):
    """~55 nm round-ish icosahedron with coarse knobby capsomeres; often in small groups."""
    particles = []
    n = 2 + rng.binomial(12, 0.5)  # real papilloma crops are crowded: often ten or more particles
    base = 55.0 * (1 + 0.04 * jitter(difficulty) * rng.standard_normal())
    for cx, cy in scatter(rng, n, base / 2, cluster=0.6):
        R = 0.5 * base * (1 + 0.03 * rng.standard_normal())
        spacing = R / 2.9
        phase = tuple(float(x) for x in rng.uniform(0, TAU, 3))
        empty = rng.random() < 0.2  # stain-penetrated empty capsid: dark centre
        contrast = rng.uniform(0.14, 0.22)

        def field(g, R=R, spacing=spacing, phase=phase, empty=empty, contrast=contrast):
            r, phi = _polar(g)
            d = 0.6 * (r - R) + 0.4 * polygon_sdf(r, phi, 6, R * 1.04)
            tex = contrast * (hex_lattice(g.u, g.v, spacing, phase) - 0.5)
            if empty:
                tex = tex - 0.18 * np.clip(1 - r / (0.65 * R), 0, 1)
            return d, tex, None

        particles.append(Particle(cx, cy, rng.uniform(0, TAU), R + 8, field, rng.uniform(0.6, 0.7)))
    return particles


def rotavirus(rng, difficulty):
    """~72 nm wheel: a dark hub, radial spokes with stain between them, and a sharp bright rim."""
    particles = []
    n = 1 + rng.binomial(4, 0.3)
    base = 72.0 * (1 + 0.04 * jitter(difficulty) * rng.standard_normal())
    for cx, cy in scatter(rng, n, base / 2, cluster=0.5):
        R = 0.5 * base * (1 + 0.03 * rng.standard_normal())
        spokes = int(rng.integers(12, 17))
        rim_w = rng.uniform(0.1, 0.16)
        spoke_c = rng.uniform(0.1, 0.18)

        def field(g, R=R, spokes=spokes, rim_w=rim_w, spoke_c=spoke_c):
            r, phi = _polar(g)
            d = r - R
            rho = r / R
            gaps = 0.5 + 0.5 * np.cos(spokes * phi)
            annulus = np.clip((rho - 0.33) * 12, 0, 1) * np.clip((1 - rim_w - rho) * 25, 0, 1)
            tex = -spoke_c * annulus * gaps * gaps
            tex = tex - 0.12 * np.clip(1 - rho / 0.3, 0, 1)  # stain in the hub
            tex = tex + 0.05 * np.clip((rho - (1 - rim_w)) * 25, 0, 1)  # outer rim
            return d, tex, None

        particles.append(Particle(cx, cy, rng.uniform(0, TAU), R + 8, field, rng.uniform(0.6, 0.68)))
    return particles


def astrovirus(rng, difficulty):
    """~29 nm smooth round particle, some with a faint 5-6 pointed star; usually several."""
    return _small_round(rng, difficulty, diameter=29.0, ragged=False)


def norovirus(rng, difficulty):
    """~32 nm round particle with a slightly ragged outline and cup-like dark depressions."""
    return _small_round(rng, difficulty, diameter=32.0, ragged=True)


def _small_round(rng, difficulty, *, diameter, ragged):
    particles = []
    n = 2 + rng.binomial(10, 0.4)
    base = diameter * (1 + 0.06 * jitter(difficulty) * rng.standard_normal())
    for cx, cy in scatter(rng, n, base / 2, cluster=0.5):
        R = 0.5 * base * (1 + 0.05 * jitter(difficulty) * rng.standard_normal())
        if ragged:
            edge = wobble(rng, rng.uniform(0.012, 0.03), 5, 9)
            cups = [(rng.uniform(0, TAU), rng.uniform(0.15, 0.6) * R) for _ in range(rng.integers(3, 7))]
            star = None
        else:
            edge = wobble(rng, 0.012, 2, 7)  # round, but not a perfect circle either
            cups = [(0.0, 0.0)] if rng.random() < 0.3 else []
            star = (
                (int(rng.choice([5, 6])), rng.uniform(0, TAU), rng.uniform(0.06, 0.12)) if rng.random() < 0.7 else None
            )
        cup_c = rng.uniform(0.06, 0.12)

        def field(g, R=R, edge=edge, cups=cups, star=star, cup_c=cup_c):
            r, phi = _polar(g)
            d = r - R * (1 + edge(phi))
            tex = np.zeros_like(r)
            for ang, rad in cups:
                du, dv = g.u - rad * math.cos(ang), g.v - rad * math.sin(ang)
                tex = tex - cup_c * np.exp(-(du * du + dv * dv) * (1 / 10.0))
            if star is not None:
                k, p, c = star
                arms = 0.5 + 0.5 * np.cos(k * phi + p)
                rho = r / R
                tex = tex + c * arms**3 * np.clip(rho * (1 - rho) * 4, 0, 1)
            return d, tex, None

        particles.append(Particle(cx, cy, 0.0, R + 6, field, rng.uniform(0.6, 0.7), rim_width=2.2))
    return particles


# ----------------------------------------------------------------------------- enveloped spheres


def _enveloped(
    rng,
    difficulty,
    *,
    diameter,
    sd,
    aspect_max,
    wobble_amp,
    stadium_p,
    fringe_len,
    fringe_period,
    fringe_c,
    surface,
    count=(1, 0.15),
):
    """Pleomorphic enveloped particle(s): a wobbly ellipse (sometimes a rod) with a spike fringe."""
    particles = []
    n = count[0] + rng.binomial(2, count[1])
    for cx, cy in scatter(rng, n, diameter / 2, cluster=0.5):
        size = diameter * (1 + sd * jitter(difficulty) * rng.standard_normal())
        R = 0.5 * max(size, 0.5 * diameter)
        aspect = 1 + (aspect_max - 1) * rng.random() ** 2
        a, b = R * math.sqrt(aspect), R / math.sqrt(aspect)
        half_len = rng.uniform(0.8, 2.0) * R if rng.random() < stadium_p else 0.0
        edge = wobble(rng, wobble_amp)
        tex_fn = surface(rng, R)
        flen = fringe_len * rng.uniform(0.85, 1.15)
        fper = fringe_period * rng.uniform(0.9, 1.1)
        fphase = rng.uniform(0, TAU)

        def field(g, R=R, a=a, b=b, half_len=half_len, edge=edge, tex_fn=tex_fn, flen=flen, fper=fper, fphase=fphase):
            r, phi = _polar(g)
            if half_len:
                d = capsule_sdf(g.u, g.v, half_len, b)
            else:
                d = ellipse_sdf(g.u, g.v, a, b)
            d = d - R * edge(phi)
            arc = phi * R + (2.0 * np.sin(3 * phi + fphase) if fper > 0 else 0)
            fr = fringe(d, arc, flen, fper, fringe_c) if fringe_c > 0 else None
            return d, tex_fn(g, r, d), fr

        reach = (max(a, b) + half_len) * (1 + 3 * wobble_amp) + flen + 8
        particles.append(
            Particle(
                cx, cy, rng.uniform(0, TAU), reach, field, rng.uniform(0.58, 0.68), rim_offset=flen + 1.0, rim_width=3.5
            )
        )
    return particles


def influenza(rng, difficulty):
    """80-120 nm pleomorphic, sometimes elongated, with a dense fringe of 12 nm HA/NA spikes."""
    depth = rng.uniform(0.04, 0.12)

    def surface(rng2, R):
        mottle = rng2.uniform(0.02, 0.05)
        seed = int(rng2.integers(1 << 30))

        def tex(g, r, d):
            m = smooth_noise(np.random.default_rng(seed), g.u.shape, 8 * g.s)
            return -depth * np.clip(-d / (0.8 * R), 0, 1) + mottle * m

        return tex

    return _enveloped(
        rng,
        difficulty,
        diameter=100,
        sd=0.12,
        aspect_max=1.4,
        wobble_amp=0.05,
        stadium_p=0.2,
        fringe_len=12,
        fringe_period=4.5,
        fringe_c=0.2,
        surface=surface,
    )


def lassa(rng, difficulty):
    """~110 nm pleomorphic arenavirus: sandy granular interior (ribosomes), sparse club spikes."""

    def surface(rng2, R):
        grain = rng2.uniform(0.08, 0.14)
        seed = int(rng2.integers(1 << 30))

        def tex(g, r, d):
            m = smooth_noise(np.random.default_rng(seed), g.u.shape, 4.5 * g.s)
            inner = np.clip(-d / 6, 0, 1)
            return inner * (
                -grain * np.clip(m - 0.6, 0, None) + 0.3 * grain * np.clip(-m - 1.0, 0, None)
            ) - 0.04 * np.clip(-d / (0.8 * R), 0, 1)

        return tex

    return _enveloped(
        rng,
        difficulty,
        diameter=108,
        sd=0.15,
        aspect_max=1.35,
        wobble_amp=0.045,
        stadium_p=0.03,
        fringe_len=9,
        fringe_period=8,
        fringe_c=0.1,
        surface=surface,
    )


def cchf(rng, difficulty):
    """~100 nm round bunyavirus with a fine, short glycoprotein fringe and a smooth interior."""

    def surface(rng2, R):
        depth = rng2.uniform(0.02, 0.08)
        seed = int(rng2.integers(1 << 30))

        def tex(g, r, d):
            m = smooth_noise(np.random.default_rng(seed), g.u.shape, 10 * g.s)
            return -depth * np.clip(-d / (0.8 * R), 0, 1) + 0.025 * m

        return tex

    return _enveloped(
        rng,
        difficulty,
        diameter=100,
        sd=0.1,
        aspect_max=1.2,
        wobble_amp=0.035,
        stadium_p=0.0,
        fringe_len=7,
        fringe_period=3.5,
        fringe_c=0.14,
        surface=surface,
    )


def rift_valley(rng, difficulty):
    """~95 nm round phlebovirus with a regular knobbly surface (icosahedral glycoprotein lattice)."""

    def surface(rng2, R):
        spacing = rng2.uniform(10, 12)
        phase = tuple(float(x) for x in rng2.uniform(0, TAU, 3))
        c = rng2.uniform(0.1, 0.16)

        def tex(g, r, d):
            rho = np.clip(r / R, 0, 0.98)
            # knobs crowd toward the edge of a sphere: stretch coordinates radially
            warp = 1 + 0.5 * rho**4
            return c * (hex_lattice(g.u * warp, g.v * warp, spacing, phase) - 0.5) - 0.03 * np.clip(
                -d / (0.8 * R), 0, 1
            )

        return tex

    return _enveloped(
        rng,
        difficulty,
        diameter=95,
        sd=0.07,
        aspect_max=1.1,
        wobble_amp=0.02,
        stadium_p=0.0,
        fringe_len=5,
        fringe_period=10.5,
        fringe_c=0.12,
        surface=surface,
    )


def nipah(rng, difficulty):
    """150-500 nm large pleomorphic paramyxovirus with a fringe and herringbone nucleocapsid hints."""
    particles = []
    D = math.exp(rng.uniform(math.log(150), math.log(500)))
    R = D / 2
    aspect = 1 + 0.6 * rng.random()
    a, b = R * math.sqrt(aspect), R / math.sqrt(aspect)
    edge = wobble(rng, 0.07, 2, 5)
    strands = []
    for _ in range(rng.integers(1, 5)):
        rad = rng.uniform(0, 0.65)
        ang = rng.uniform(0, TAU)
        strands.append(
            (
                rad * a * math.cos(ang),
                rad * b * math.sin(ang),
                rng.uniform(0, math.pi),
                rng.uniform(25, min(110, 0.6 * R)),
                rng.uniform(0.07, 0.12),
            )
        )
    depth = rng.uniform(0.06, 0.14)
    flen = 11 * rng.uniform(0.85, 1.15)
    # the crop is centred on the particle, but big ones are cut: place a random part in view
    off = min(R, 90.0) * 0.7
    cx = FIELD_NM / 2 + rng.uniform(-off, off)
    cy = FIELD_NM / 2 + rng.uniform(-off, off)

    def field(g):
        r, phi = _polar(g)
        d = ellipse_sdf(g.u, g.v, a, b) - R * edge(phi)
        tex = -depth * np.clip(-d / 40, 0, 1)
        for sx, sy, th, half, c in strands:
            ct, st = math.cos(th), math.sin(th)
            du, dv = g.u - sx, g.v - sy
            along = du * ct + dv * st
            across = np.abs(dv * ct - du * st)
            mask = np.clip((9 - across) * 0.6, 0, 1) * np.clip((half - np.abs(along)) * 0.3, 0, 1)
            chevrons = np.cos((along + 0.8 * across) * (TAU / 7.0))
            tex = tex + mask * (c * chevrons + 0.03 + depth * 0.5)
        return d, tex, fringe(d, phi * R, flen, 7.5, 0.17)

    particles.append(
        Particle(
            cx,
            cy,
            rng.uniform(0, TAU),
            max(a, b) * 1.25 + flen + 8,
            field,
            rng.uniform(0.58, 0.66),
            rim_offset=flen + 1,
            rim_width=4.0,
        )
    )
    return particles


# ----------------------------------------------------------------------------- poxviruses


def cowpox(rng, difficulty):
    """~250 x 350 nm brick (rounded rectangle) with meandering surface tubules and a dense core."""
    j = jitter(difficulty)
    hx = 175 * (1 + 0.05 * j * rng.standard_normal())
    hy = 125 * (1 + 0.05 * j * rng.standard_normal())
    corner = rng.uniform(35, 60)
    seed = int(rng.integers(1 << 30))
    tubule_c = rng.uniform(0.04, 0.08)
    core = rng.uniform(0.04, 0.1)
    off = 15.0

    def field(g):
        d = box_sdf(g.u, g.v, hx, hy, corner)
        m = smooth_noise(np.random.default_rng(seed), g.u.shape, 14 * g.s)
        tubules = np.cos(m * 5.0)  # level lines of smooth noise look like random short ridges
        dcore = box_sdf(g.u * 1.0, g.v * 1.25, 0.55 * hx, 0.55 * hy, corner * 0.8)
        # the core shows as a soft density, not the sharp outlined box of a cartoon
        tex = (
            tubule_c * tubules * np.clip(-d / 10, 0, 1)
            + core * np.clip(-dcore / 25, 0, 1)
            - 0.03 * np.exp(-(dcore * dcore) * (1 / 40.0))
        )
        return d, tex, None

    cx = FIELD_NM / 2 + rng.uniform(-off, off)
    cy = FIELD_NM / 2 + rng.uniform(-off, off)
    return [
        Particle(cx, cy, rng.uniform(0, TAU), math.hypot(hx, hy) + 10, field, rng.uniform(0.58, 0.66), rim_width=4.0)
    ]


def orf(rng, difficulty):
    """~160 x 260 nm ovoid parapoxvirus with a regular criss-cross surface tubule."""
    j = jitter(difficulty)
    # real crops show Orf larger than the textbook 260 x 160 nm: it fills most of the field
    a = 155 * (1 + 0.05 * j * rng.standard_normal())
    b = 96 * (1 + 0.05 * j * rng.standard_normal())
    period = rng.uniform(13, 18)
    cross = math.radians(rng.uniform(30, 45))
    c = rng.uniform(0.06, 0.11)
    edge = wobble(rng, 0.02)
    off = 30.0

    def field(g):
        r, phi = _polar(g)
        d = ellipse_sdf(g.u, g.v, a, b) - 0.5 * (a + b) * edge(phi)
        # a tubule wound round an ovoid: stripes crowd toward the rim, like on a ball of wool
        uu = a * np.arcsin(np.clip(g.u / a, -0.999, 0.999))
        vv = b * np.arcsin(np.clip(g.v / b, -0.999, 0.999))
        k = TAU / period
        s1 = np.cos(k * (uu * math.cos(cross) + vv * math.sin(cross)))
        s2 = np.cos(k * (uu * math.cos(cross) - vv * math.sin(cross)))
        tex = c * 0.5 * (s1 + s2) * np.clip(-d / 8, 0, 1)
        return d, tex, None

    cx = FIELD_NM / 2 + rng.uniform(-off, off)
    cy = FIELD_NM / 2 + rng.uniform(-off, off)
    return [Particle(cx, cy, rng.uniform(0, TAU), a * 1.1 + 10, field, rng.uniform(0.6, 0.68), rim_width=4.0)]


# ----------------------------------------------------------------------------- filoviruses

# Shape frequencies: both viruses make every shape, so a single image is often ambiguous; Marburg
# favours "6"-shapes, rings and short rods, Ebola long, U-bent, crooked or branched filaments.
_FILO_SHAPES = ("rod", "u", "crook", "six", "ring", "branched")
_FILO_WEIGHTS = {
    "Ebola": (0.40, 0.15, 0.15, 0.15, 0.05, 0.10),
    "Marburg": (0.25, 0.10, 0.05, 0.35, 0.20, 0.05),
}


def _turtle(start, heading, steps):
    """Walk (length, curvature) steps from `start`; returns the polyline points (k, 2) and the
    (x, y, heading) at the end of each step, to find loop centres on a bent path."""
    pts = [start]
    x, y = start
    h = heading
    marks = []
    for length, curv in steps:
        n = max(1, int(math.ceil(length / 15.0)))
        ds = length / n
        for _ in range(n):
            h += curv * ds
            x, y = x + ds * math.cos(h), y + ds * math.sin(h)
            pts.append((x, y))
        marks.append((x, y, h))
    return np.asarray(pts, dtype=np.float64), marks


def _left_of(mark, dist, back=0.0):
    """The point `dist` to the left of a path mark (the centre of a left turn), `back` behind it."""
    x, y, h = mark
    return np.array([x - back * math.cos(h) - dist * math.sin(h), y - back * math.sin(h) + dist * math.cos(h)])


def _filament_paths(shape: str, rng, long: bool):
    """Centre lines (local frame) and the point that the crop is centred on."""
    r_loop = rng.uniform(62, 100)
    wander = lambda: rng.normal(0, 1 / 600)  # noqa: E731 - gentle bends of a flexible filament
    if shape == "rod":
        length = rng.uniform(600, 1600) if long else rng.uniform(250, 800)
        steps = [(length / 4, wander()) for _ in range(4)]
        path, _ = _turtle((0.0, 0.0), 0.0, steps)
        anchor = path[rng.integers(len(path) // 4, max(len(path) * 3 // 4, len(path) // 4 + 1))]
        return [path], anchor
    if shape in ("u", "crook"):
        arm = rng.uniform(200, 600)
        turn = math.pi if shape == "u" else rng.uniform(1.1, 1.5) * math.pi
        back = arm * rng.uniform(0.6, 1.0) if shape == "u" else rng.uniform(0, 80)
        path, marks = _turtle((0.0, 0.0), 0.0, [(arm, wander()), (r_loop * turn, 1 / r_loop), (back + 1, wander())])
        return [path], _left_of(marks[0], r_loop) + rng.normal(0, 20, 2)
    if shape == "six":
        tail = rng.uniform(100, 600) if long else rng.uniform(60, 350)
        path, marks = _turtle(
            (0.0, 0.0), 0.0, [(tail, wander()), (r_loop * rng.uniform(1.7, 1.95) * math.pi, 1 / r_loop)]
        )
        # look at the loop from the tail's side, so the stem of the "6" is usually in view
        return [path], _left_of(marks[0], r_loop * rng.uniform(0.3, 1.0), back=rng.uniform(0.0, 0.9) * r_loop)
    if shape == "ring":
        path, _ = _turtle((0.0, 0.0), 0.0, [(r_loop * TAU, 1 / r_loop)])
        return [path], np.array([0.0, r_loop])
    # branched: a main filament with a side branch leaving at an angle
    length = rng.uniform(500, 1200)
    main, _ = _turtle((0.0, 0.0), 0.0, [(length, wander())])
    k = len(main) // 2
    side, _ = _turtle(tuple(main[k]), rng.choice([-1, 1]) * rng.uniform(0.5, 1.2), [(rng.uniform(150, 500), wander())])
    return [main, side], main[k]


def _filovirus(rng, difficulty, name):
    shape = _FILO_SHAPES[rng.choice(len(_FILO_SHAPES), p=_FILO_WEIGHTS[name])]
    paths, anchor = _filament_paths(shape, rng, long=name == "Ebola")
    # measured on the real crops, filaments look ~50-65 nm wide (not the textbook 80 nm)
    width = (60.0 if name == "Ebola" else 64.0) * (1 + 0.08 * jitter(difficulty) * rng.standard_normal())
    half = 0.5 * width
    ang = rng.uniform(0, TAU)
    ca, sa = math.cos(ang), math.sin(ang)
    centre = np.array([FIELD_NM / 2, FIELD_NM / 2]) + rng.normal(0, 20, 2)
    segs_a, segs_b, segs_s = [], [], []
    for path in paths:
        p = (path - anchor) @ np.array([[ca, sa], [-sa, ca]]) + centre
        seglen = np.hypot(*(p[1:] - p[:-1]).T)
        s0 = np.concatenate([[0.0], np.cumsum(seglen)[:-1]])
        keep = (np.minimum(p[:-1], p[1:]) < FIELD_NM + width).all(1) & (np.maximum(p[:-1], p[1:]) > -width).all(1)
        segs_a.append(p[:-1][keep])
        segs_b.append(p[1:][keep])
        segs_s.append(s0[keep])
    A, B, S0 = np.concatenate(segs_a), np.concatenate(segs_b), np.concatenate(segs_s)
    striation = rng.uniform(4.5, 6.5)
    striation_c = rng.uniform(0.04, 0.09)
    channel_c = rng.uniform(0.04, 0.1)
    flen = 9 * rng.uniform(0.85, 1.15)

    def field(g):
        dist, s = _polyline_distance(A, B, S0, g)
        d = dist - half
        core = np.clip((half * 0.55 - dist) * 0.5, 0, 1)
        tex = striation_c * core * np.cos(s * (TAU / striation)) - channel_c * np.exp(-(dist * dist) * (1 / 20.0))
        return d, tex, fringe(d, s, flen, 6.0, 0.13)

    if len(A) == 0:  # the whole filament fell outside the crop: draw nothing (rare)
        return []
    return [
        Particle(
            FIELD_NM / 2,
            FIELD_NM / 2,
            0.0,
            FIELD_NM,
            field,
            rng.uniform(0.58, 0.68),
            rim_offset=flen + 1,
            rim_width=4.0,
        )
    ]


def _polyline_distance(A, B, S0, g: Grid):
    """Distance to the nearest segment and the arc length there, computed on a 4x coarser grid
    (distance fields are smooth, so bilinear upsampling is nearly exact) to keep filaments fast."""
    h, w = len(g.ys), len(g.xs)
    f = 4 if min(h, w) >= 64 else 1
    ch, cw = max(1, h // f), max(1, w // f)
    # coarse pixel centres, in the same nm frame as g.xs/g.ys (centre relative): PIL's resize maps
    # pixel centres, so coarse pixel j sits at fine position (j + 0.5) * w / cw - 0.5
    x0 = g.xs[0] - 0.5 / g.s
    y0 = g.ys[0] - 0.5 / g.s
    X = (x0 + (np.arange(cw) + 0.5) * (w / cw) / g.s + FIELD_NM / 2)[None, None, :]
    Y = (y0 + (np.arange(ch) + 0.5) * (h / ch) / g.s + FIELD_NM / 2)[None, :, None]
    X, Y = X.astype(np.float32), Y.astype(np.float32)
    A, B = A.astype(np.float32), B.astype(np.float32)
    ax, ay = A[:, 0, None, None], A[:, 1, None, None]
    ex, ey = (B[:, 0] - A[:, 0])[:, None, None], (B[:, 1] - A[:, 1])[:, None, None]
    L2 = ex * ex + ey * ey + 1e-9
    px, py = X - ax, Y - ay
    t = np.clip((px * ex + py * ey) / L2, 0, 1)
    dx, dy = px - t * ex, py - t * ey
    d2 = dx * dx + dy * dy
    idx = np.argmin(d2, axis=0)
    dist = np.sqrt(np.take_along_axis(d2, idx[None], 0)[0]).astype(np.float32)
    tt = np.take_along_axis(t, idx[None], 0)[0]
    s = (S0[idx] + tt * np.sqrt(L2[idx, 0, 0])).astype(np.float32)
    if f == 1 and (ch, cw) == (h, w):
        return dist, s
    up = lambda a: np.asarray(Image.fromarray(a, "F").resize((w, h), Image.BILINEAR))  # noqa: E731
    return up(dist), up(s)


def ebola(rng, difficulty):
    """~80 nm wide filament: long, curved, U-bent, shepherd's crook, branched, sometimes a "6"."""
    return _filovirus(rng, difficulty, "Ebola")


def marburg(rng, difficulty):
    """~84 nm wide filament: more often a "6", a ring or a short rod than Ebola."""
    return _filovirus(rng, difficulty, "Marburg")


BUILDERS: dict[str, Callable[[np.random.Generator, float], list[Particle]]] = {
    "Adenovirus": adenovirus,
    "Astrovirus": astrovirus,
    "CCHF": cchf,
    "Cowpox": cowpox,
    "Ebola": ebola,
    "Influenza": influenza,
    "Lassa": lassa,
    "Marburg": marburg,
    "Nipah virus": nipah,
    "Norovirus": norovirus,
    "Orf": orf,
    "Papilloma": papilloma,
    "Rift Valley": rift_valley,
    "Rotavirus": rotavirus,
}
assert tuple(BUILDERS) == CLASS_NAMES
