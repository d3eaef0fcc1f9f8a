"""A learned particle detector: a small U-Net that draws a heat map of particle centres.

Why: the Laplacian-of-Gaussian detector (`micrograph.detect`) proposes blobs, not particles. On the
development micrographs it finds 0.75 of the annotated particles in its 60 strongest candidates, at
a precision of 0.10: stain grain, debris and the interiors of large particles are blobs too, and in
packed clusters (Papilloma, Rift Valley) neighbours merge into one blob. A network trained on the
annotated boxes (the boxes CSV `virion crops` reads) learns what a particle centre looks like, one
peak per particle whatever its size (the heat-map idea of CenterNet, Zhou et al. 2019, "Objects as
points"). Measured in docs/micrographs.md.

The network sees the micrograph at 4 nm per pixel (a 1000 x 1000 micrograph at 1 nm/px is 250 x 250):
the smallest particles (Astrovirus, 25 nm) are still 6 px across, the largest (Cowpox, 350 nm) fit in
its receptive field, and training takes minutes on two CPU cores. Two input channels: the micrograph
with its padding mirror-filled and its background flattened (`detect.flatten`), and the valid-pixel
mask (padding teaches nothing). Two outputs per pixel: a particle-centre logit and the log of the
particle's size. Trained on random 128-px crops with flips and quarter turns and the penalty-reduced
focal loss of CenterNet (targets: a Gaussian at each box centre, its width a sixth of the box).

Saved as plain files that run no code when loaded: `detector.json` (the architecture's few numbers,
scale, training facts) and `detector.weights.h5` (weights only; the network is rebuilt from the JSON).
Class-agnostic: the run's classifier names each candidate, as with the LoG detector.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from virion.atomic import atomic_write_text
from virion.errors import VirionError
from virion.micrograph.detect import DEFAULT_MAX_CANDIDATES, Candidates, fill_padding, flatten, square_boxes

DETECTOR_DIR = "detector"  # the folder name a crops folder or run keeps its detector under
META_FILE = "detector.json"
WEIGHTS_FILE = "detector.weights.h5"
FORMAT = "virion-heatmap-detector"
FORMAT_VERSION = 1

NM_PER_PX = 4.0  # the network's pixel size
WIDTHS = (16, 32, 48, 64, 96)  # filters per U-Net level (4 poolings: inputs are padded to a multiple of 16)
MULTIPLE = 2 ** (len(WIDTHS) - 1)
TRAIN_CROP = 128  # training crops (detector px); the network is fully convolutional
FLATTEN_NM = 120.0  # the background removed before detection varies more slowly than this (nm)
INPUT_CLIP = 8.0  # flattened image, in robust sd units, clipped to +-8 and divided by 4
# A candidate's heat (the peak's probability of being a particle centre) must reach this: low, so
# that the detector proposes and the classifier's `_background` class disposes.
DEFAULT_THRESHOLD = 0.1
# Runs without a `_background` class cannot reject stain: their candidates must reach this heat.
NO_BACKGROUND_MIN_SCORE = 0.3
# A scan keeps a candidate whose best class has at least this probability. Its candidates are mostly
# particles (precision 0.44 before classification, against the LoG's 0.10), so the classifier's
# doubtful answers on them are still evidence: 0.3 gave better verdicts than 0.5 (docs/micrographs.md).
MIN_CONFIDENCE = 0.3
DEFAULT_EPOCHS = 30
DEFAULT_BATCH = 8
SIZE_REFERENCE_NM = 100.0  # the size head predicts log(size / 100 nm)


# ------------------------------------------------------------------------------------------ inputs


def detector_input(pixels: np.ndarray, nm_per_px: float, valid: np.ndarray | None = None,
                   filled: np.ndarray | None = None) -> tuple[np.ndarray, float]:  # fmt: skip
    """(H, W, 2) float32 network input at NM_PER_PX, and the scale (detector px per input px).

    `valid`: True on micrograph pixels (default: not padding); `filled`: the image with its padding
    mirror-filled (`detect.fill_padding`), to skip doing it again.
    """
    from virion.data.padding import padding_mask

    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise VirionError(f"the detector takes a 2-D grayscale micrograph, got shape {pixels.shape}")
    valid = ~padding_mask(pixels) if valid is None else np.asarray(valid, bool)
    if filled is None:
        filled = fill_padding(pixels, valid)
    flat = flatten(filled, valid, sigma_px=FLATTEN_NM / float(nm_per_px))
    scale = float(nm_per_px) / NM_PER_PX
    h, w = pixels.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = np.asarray(Image.fromarray(flat.astype(np.float32), "F").resize(size, Image.Resampling.BOX))
    mask = np.asarray(Image.fromarray(valid.astype(np.float32), "F").resize(size, Image.Resampling.BOX))
    img = np.clip(img, -INPUT_CLIP, INPUT_CLIP) / 4.0
    return np.stack([img, mask], axis=-1).astype(np.float32), size[0] / w


def _pad_to(x: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.pad(x, ((0, h - x.shape[0]), (0, w - x.shape[1]), (0, 0)))


def _padded_shape(h: int, w: int, at_least: int = 0) -> tuple[int, int]:
    def up(n):
        return max(-(-n // MULTIPLE) * MULTIPLE, at_least)

    return up(h), up(w)


def render_targets(shape, centres, sizes) -> np.ndarray:
    """(H, W, 3) targets at detector scale: Gaussian heat, 1 at each centre pixel, log size at centres.

    centres: (N, 2) x, y in detector px; sizes: (N,) particle size in nm (a box's shorter side).
    """
    h, w = shape
    out = np.zeros((h, w, 3), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    for (cx, cy), size_nm in zip(np.asarray(centres, float).reshape(-1, 2), np.asarray(sizes, float)):
        ix, iy = int(cx), int(cy)
        if not (0 <= ix < w and 0 <= iy < h):
            continue
        sigma = max(0.7, size_nm / NM_PER_PX / 6.0)
        out[..., 0] = np.maximum(out[..., 0], np.exp(-((xx - ix) ** 2 + (yy - iy) ** 2) / (2 * sigma**2)))
        out[iy, ix, 1] = 1.0
        out[iy, ix, 2] = np.log(max(size_nm, 1.0) / SIZE_REFERENCE_NM)
    out[..., 0] = np.maximum(out[..., 0], out[..., 1])
    return out


# ----------------------------------------------------------------------------------------- network


def build_network(widths=WIDTHS):
    """A U-Net: two 3x3 conv + BN + ReLU per level, max-pooling down, upsampling + skip up; 2 outputs.

    Batch-norm momentum 0.9, so that the moving statistics also settle in short trainings (tests).
    """
    import keras
    from keras import layers

    def block(x, filters):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization(momentum=0.9)(x)
            x = layers.ReLU()(x)
        return x

    inputs = keras.Input((None, None, 2))
    x, skips = inputs, []
    for level, filters in enumerate(widths):
        x = block(x, filters)
        if level < len(widths) - 1:
            skips.append(x)
            x = layers.MaxPooling2D()(x)
    for filters, skip in zip(reversed(widths[:-1]), reversed(skips)):
        x = layers.Concatenate()([layers.UpSampling2D()(x), skip])
        x = block(x, filters)
    # Start every pixel at p = 0.01 (focal-loss practice): most pixels are not particle centres.
    heat = layers.Conv2D(1, 1, bias_initializer=keras.initializers.Constant(-4.6), name="heat")(x)
    size = layers.Conv2D(1, 1, name="size")(x)
    return keras.Model(inputs, layers.Concatenate()([heat, size]), name="heatmap_detector")


def focal_loss(y_true, y_pred):
    """CenterNet's penalty-reduced focal loss on the heat map plus 0.1 x L1 on log size at centres."""
    from keras import ops

    heat, peak, size = y_true[..., 0], y_true[..., 1], y_true[..., 2]
    p = ops.clip(ops.sigmoid(y_pred[..., 0]), 1e-4, 1 - 1e-4)
    positive = peak * ops.square(1 - p) * ops.log(p)
    negative = (1 - peak) * ops.power(1 - heat, 4) * ops.square(p) * ops.log(1 - p)
    count = ops.maximum(ops.sum(peak), 1.0)
    return -ops.sum(positive + negative) / count + 0.1 * ops.sum(peak * ops.abs(y_pred[..., 1] - size)) / count


# ------------------------------------------------------------------------------------------ detector


@dataclass
class HeatmapDetector:
    """A trained heat-map detector: `detect` gives `Candidates` as `detect.detect` does."""

    model: object
    widths: tuple = WIDTHS
    info: dict = field(default_factory=dict)
    threshold: float = DEFAULT_THRESHOLD
    no_background_min_score: float = NO_BACKGROUND_MIN_SCORE
    min_confidence: float = MIN_CONFIDENCE

    def heat(self, pixels, nm_per_px: float = 1.0, *, mask=None, filled=None) -> tuple[np.ndarray, np.ndarray, float]:
        """(heat in 0..1, maps, scale) at detector scale; maps: image, valid mask, log size (H, W, 3)."""
        x, scale = detector_input(pixels, nm_per_px, None if mask is None else ~np.asarray(mask, bool), filled)
        h, w = x.shape[:2]
        out = np.asarray(self.model.predict(_pad_to(x, *_padded_shape(h, w))[None], verbose=0))[0, :h, :w]
        heat = 1.0 / (1.0 + np.exp(-out[..., 0]))
        heat[x[..., 1] < 0.5] = 0.0  # padding gives no candidates
        return heat, np.concatenate([x, out[..., 1:2]], axis=-1), scale

    def detect(self, image, nm_per_px: float = 1.0, *, threshold: float | None = None,
               max_candidates: int = DEFAULT_MAX_CANDIDATES, mask=None, filled=None) -> Candidates:  # fmt: skip
        """Local maxima of the heat map (3 x 3 detector px) above `threshold`, strongest first, at most
        `max_candidates`; x, y, diameter in pixels of `image`; score = heat (0..1); diameter from the
        size head; a candidate's polarity is the sign of the flattened image at its centre."""
        from scipy import ndimage

        threshold = self.threshold if threshold is None else float(threshold)
        heat, maps, scale = self.heat(image, nm_per_px, mask=mask, filled=filled)
        peaks = (heat == ndimage.maximum_filter(heat, size=3, mode="constant")) & (heat > threshold)
        iy, ix = np.nonzero(peaks)
        order = np.argsort(-heat[iy, ix], kind="stable")[:max_candidates]
        iy, ix = iy[order], ix[order]
        if not len(ix):
            return Candidates.empty()
        x, y = (ix + 0.5) / scale, (iy + 0.5) / scale
        d = np.exp(maps[iy, ix, 2]) * SIZE_REFERENCE_NM / float(nm_per_px)
        smooth = ndimage.uniform_filter(maps[..., 0], 3)
        pol = np.where(smooth[iy, ix] >= 0, 1, -1).astype(np.int8)
        x, y, d = x.astype(float), y.astype(float), d.astype(float)
        return Candidates(x, y, d, heat[iy, ix].astype(float), pol, square_boxes(x, y, d))

    # ------------------------------------------------------------------------------------- files

    def save(self, folder: str | Path) -> Path:
        """Write detector.json and detector.weights.h5 into `folder` (created)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_weights(folder / WEIGHTS_FILE)
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "nm_per_px": NM_PER_PX,
            "widths": list(self.widths),
            "threshold": self.threshold,
            "no_background_min_score": self.no_background_min_score,
            **self.info,
        }
        atomic_write_text(folder / META_FILE, json.dumps(meta, indent=1) + "\n")
        return folder


def is_detector(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / META_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def load_detector(folder: str | Path) -> HeatmapDetector:
    """Rebuild the network from detector.json and load its weights (no code is loaded from the files)."""
    folder = Path(folder)
    if not is_detector(folder):
        raise VirionError(
            f"{folder}: not a virion detector (needs {META_FILE} and {WEIGHTS_FILE}); train one with `virion detector`"
        )
    try:
        meta = json.loads((folder / META_FILE).read_text())
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not an object")
        if meta.get("format") != FORMAT or int(meta.get("version", 0)) > FORMAT_VERSION:
            raise ValueError(f"format {meta.get('format')!r} version {meta.get('version')!r}")
        if float(meta["nm_per_px"]) != NM_PER_PX:
            raise ValueError(f"trained at {meta['nm_per_px']} nm/px, this virion runs detectors at {NM_PER_PX}")
        widths = tuple(int(w) for w in meta["widths"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VirionError(f"{folder / META_FILE}: not a detector this virion can read ({exc})") from None
    model = build_network(widths)
    try:
        model.load_weights(folder / WEIGHTS_FILE)
    except (OSError, ValueError) as exc:
        raise VirionError(f"{folder / WEIGHTS_FILE}: weights do not fit the detector's network ({exc})") from None
    info = {k: v for k, v in meta.items() if k not in ("format", "version", "nm_per_px", "widths", "threshold",
                                                       "no_background_min_score")}  # fmt: skip
    return HeatmapDetector(
        model, widths, info, float(meta.get("threshold", DEFAULT_THRESHOLD)),
        float(meta.get("no_background_min_score", NO_BACKGROUND_MIN_SCORE)),
    )  # fmt: skip


# ----------------------------------------------------------------------------------------- training


@dataclass
class TrainingMicrograph:
    """One annotated micrograph for detector training: its pixels, pixel size and boxes (input px)."""

    pixels: np.ndarray
    nm_per_px: float
    boxes: np.ndarray  # (N, 4) xmin, ymin, xmax, ymax


def _sample(m: TrainingMicrograph) -> tuple[np.ndarray, np.ndarray]:
    x, scale = detector_input(m.pixels, m.nm_per_px)
    b = np.asarray(m.boxes, float).reshape(-1, 4)
    centres = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], axis=1) * scale
    sizes = np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) * m.nm_per_px
    y = render_targets(x.shape[:2], centres, sizes)
    h, w = _padded_shape(*x.shape[:2], at_least=MULTIPLE)
    return _pad_to(x, h, w), _pad_to(y, h, w)


def _crop_batch(samples, index, crop: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Random crops with a random quarter turn and flip, same for input and targets."""
    xs, ys = [], []
    for i in index:
        x, y = samples[i]
        c = min(crop, x.shape[0], x.shape[1])
        oy, ox = rng.integers(0, x.shape[0] - c + 1), rng.integers(0, x.shape[1] - c + 1)
        pair = np.concatenate([x, y], axis=-1)[oy : oy + c, ox : ox + c]
        pair = np.rot90(pair, int(rng.integers(4)))
        if rng.random() < 0.5:
            pair = pair[:, ::-1]
        pair = np.ascontiguousarray(pair)
        pair[..., 0] *= rng.uniform(0.7, 1.4)  # contrast
        xs.append(pair[..., :2])
        ys.append(pair[..., 2:])
    return np.stack(xs), np.stack(ys)


def train_detector(
    micrographs: list[TrainingMicrograph],
    *,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH,
    learning_rate: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
    widths=WIDTHS,
    checkpoint=None,
) -> HeatmapDetector:
    """Train a heat-map detector on annotated micrographs (AdamW, cosine decay, random 128-px crops).

    checkpoint: where each finished epoch is saved and a killed training resumes from
    (`heatmap_training.TrainingState`; None: no checkpoints). Why it resumes exactly: the weights,
    the optimizer's variables (its iteration counter drives the cosine decay) and the state of the
    random generator that picks batches and crops are all restored, so the remaining epochs run as
    they would have, and the total stays `epochs`. The checkpoint is used only when its
    fingerprint (`training_fingerprint`) matches this training.
    """
    import keras
    from tqdm.auto import tqdm

    if not micrographs:
        raise VirionError("no annotated micrograph to train the detector on")
    if epochs < 1:
        raise VirionError(f"--epochs {epochs}: must be at least 1")
    started = time.perf_counter()
    samples = [_sample(m) for m in micrographs]
    smallest = min(min(x.shape[:2]) for x, _ in samples)
    crop = max(MULTIPLE, min(TRAIN_CROP, smallest) // MULTIPLE * MULTIPLE)
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_network(widths)
    steps = max(1, -(-len(samples) // batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps * epochs, alpha=0.05)
    model.compile(keras.optimizers.AdamW(schedule, weight_decay=1e-4), loss=focal_loss)
    model.optimizer.build(model.trainable_variables)  # its variables exist before the first step: restorable
    losses: list[float] = []
    if checkpoint is not None:
        settings = dict(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed, crop=crop)
        fingerprint = training_fingerprint(micrographs, samples, widths=list(widths), **settings)
        losses = checkpoint.resume(fingerprint, model, rng, epochs)
    done = len(losses)
    bar = tqdm(range(done, epochs), desc="virion detector", unit="epoch", initial=done, total=epochs,
               disable=not progress)  # fmt: skip
    for _ in bar:
        order = rng.permutation(len(samples))
        batch_losses = []
        for s in range(steps):
            xb, yb = _crop_batch(samples, np.sort(order[s * batch_size : (s + 1) * batch_size]), crop, rng)
            batch_losses.append(float(model.train_on_batch(xb, yb)))
        loss = float(np.mean(batch_losses))
        if not np.isfinite(loss):
            raise VirionError("detector training diverged (loss is not finite); try a lower learning rate")
        losses.append(loss)
        if checkpoint is not None:
            checkpoint.commit(model, rng, losses)
        bar.set_postfix(loss=f"{loss:.3f}")
    info = {
        "trained_on": {"micrographs": len(micrographs), "boxes": int(sum(len(m.boxes) for m in micrographs))},
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "final_loss": round(losses[-1], 4),
        "train_seconds": round(time.perf_counter() - started, 1),  # this process's share when resumed
    }
    if done:
        info["resumed_after_epoch"] = done
    return HeatmapDetector(model, tuple(widths), info)


def training_fingerprint(micrographs: list[TrainingMicrograph], samples, **settings) -> str:
    """A hash of what a training learns from: the network inputs and targets (so the micrographs'
    pixels, pixel sizes and boxes, and the code that prepares them) and the settings. A checkpoint
    resumes only a training with the same fingerprint."""
    digest = hashlib.sha256()
    facts = {"format": FORMAT_VERSION, "nm_per_px": [float(m.nm_per_px) for m in micrographs], **settings}
    digest.update(json.dumps(facts, sort_keys=True).encode())
    for x, y in samples:
        for a in (x, y):
            digest.update(f"{a.dtype.str}{a.shape}".encode())
            digest.update(np.ascontiguousarray(a).data)
    return digest.hexdigest()
