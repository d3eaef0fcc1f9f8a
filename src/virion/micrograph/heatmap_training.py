"""`virion detector`: train the learned particle detector (`micrograph.heatmap`) on annotated micrographs.

Reads the annotations `virion crops` reads (a boxes CSV, or YOLO labels + images + class list:
`crops.read_annotations`), each micrograph once, at its own pixel size (the file's, else
`nm_per_px`, else the 1 nm/px `virion scan` assumes too), and trains on the boxes. The detector is
class-agnostic: labels only say where particles are.

What is left out, and why: a point (x, y without a box) has no size, and the detector learns sizes
too, so points are skipped (counted); a micrograph whose particles are all points is skipped
whole, since training on it would call its particles background. A YOLO image with an empty label
file is kept: the annotator said it has no particle. Unreadable micrographs are listed, not fatal,
unless none is left.

Output: DIR/detector.json + DIR/detector.weights.h5 (`HeatmapDetector.save`), written in a
temporary folder beside DIR and renamed into place when complete; `virion crops --detector DIR`
carries it to the crops and on to the runs trained on them.

Crash safety: training takes minutes, and DIR appears only at the end, so every finished epoch is
also checkpointed in a hidden folder beside DIR (`.DIR.detector-state/`, `TrainingState`) that
survives kills and errors. Running the same command again resumes after the last finished epoch;
the folder is removed once DIR is published. The checkpoint is plain data (JSON, an HDF5 weights
file, a NumPy .npz read without pickle): nothing loaded from it runs code.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from virion.atomic import atomic_write, atomic_write_text
from virion.data.decode import DecodeError
from virion.errors import VirionError
from virion.fs import publish_output_dir, start_output_dir
from virion.micrograph.crops import read_annotations, shown_path
from virion.micrograph.heatmap import (
    DEFAULT_BATCH,
    DEFAULT_EPOCHS,
    META_FILE,
    TrainingMicrograph,
    train_detector,
)
from virion.micrograph.io import pixel_size, plausible_nm_per_px, read_micrograph
from virion.micrograph.scan import DEFAULT_NM_PER_PX
from virion.training.faults import crash_point

STATE_SUFFIX = ".detector-state"  # the checkpoint folder of DIR is DIR.parent / f".{DIR.name}{STATE_SUFFIX}"
STATE_FILE = "state.json"  # the commit record: an epoch counts once this names its files
STATE_FORMAT = "virion-detector-training-state"


@dataclass
class DetectorTrainingResult:
    """What `train_from_boxes` trained on and wrote; `summary()` is what the CLI prints."""

    out: Path
    micrographs: int = 0
    boxes: int = 0
    points: int = 0  # annotations without a box: skipped
    points_only: int = 0  # micrographs skipped because all their particles are points
    unreadable: list[str] = field(default_factory=list)  # "file: reason"
    bad: list[str] = field(default_factory=list)  # rejected annotation rows, one line each
    scale_sources: Counter = field(default_factory=Counter)  # "metadata" / "--nm-per-px" / "assumed"
    epochs: int = 0
    resumed_after: int = 0  # epochs a killed earlier attempt had finished (0: trained from the start)
    final_loss: float = float("nan")
    seconds: float = 0.0

    def summary(self, max_lines: int = 10) -> str:
        lines = [
            f"virion detector: trained on {self.boxes:,} boxes in {self.micrographs} micrographs, {self.epochs} "
            f"epochs (final loss {self.final_loss:.3f}) in {self.seconds:.0f} s -> {self.out}"
        ]
        if self.resumed_after:
            lines.append(f"Resumed after epoch {self.resumed_after}, from the checkpoint of an interrupted training.")
        scale = ", ".join(f"{n} {src}" for src, n in sorted(self.scale_sources.items()))
        lines.append(f"Pixel size: {scale}.")
        if self.points:
            lines.append(
                f"Points skipped: {self.points:,} (no box, no size); {self.points_only} micrograph(s) with only points."
            )
        for title, items in (("Unreadable micrographs", self.unreadable), ("Bad rows", self.bad)):
            if items:
                lines.append(f"{title}: {len(items):,} skipped:")
                lines += [f"  {line}" for line in items[:max_lines]]
                if len(items) > max_lines:
                    lines.append(f"  ... and {len(items) - max_lines:,} more")
        lines.append(f"Use it: virion crops BOXES.csv --out CROPS --detected --detector {self.out} (runs keep it).")
        return "\n".join(lines)


def train_from_boxes(
    boxes=None,
    out=None,
    *,
    yolo=None,
    images=None,
    classes=None,
    nm_per_px: float | None = None,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> DetectorTrainingResult:
    """Train a heat-map detector on annotated micrographs and save it into `out` (module docstring).

    boxes: a boxes CSV, or yolo (labels folder) + images + classes, as `cut_crops`. nm_per_px: the
    pixel size of micrographs whose file states none. An existing non-empty `out` is refused unless
    `overwrite` (and then only an earlier detector). A training that was killed or failed resumes
    from its last finished epoch when the same data and settings are given again (`TrainingState`).
    """
    started = time.perf_counter()
    if out is None:
        raise VirionError("--out: give the folder to save the detector in")
    out = Path(out).expanduser()
    if nm_per_px is not None and plausible_nm_per_px(nm_per_px) is None:
        raise VirionError(f"--nm-per-px {nm_per_px}: give a pixel size from 0.005 to 500 nm")
    if int(epochs) < 1:
        raise VirionError(f"--epochs {epochs}: must be at least 1")
    annotations = read_annotations(boxes, yolo, images, classes)
    result = DetectorTrainingResult(out, bad=list(annotations.bad), epochs=int(epochs))
    tmp = start_output_dir(out, overwrite, META_FILE, "virion detector")  # a bad --out fails before training
    try:
        micrographs = _training_micrographs(annotations, nm_per_px, result)
        if not micrographs:
            raise VirionError(
                f"{annotations.source}: no micrograph with boxes to train on ({len(result.unreadable)} unreadable, "
                f"{result.points_only} with points only, {len(result.bad)} bad rows)"
            )
        state = TrainingState(state_folder(out))
        detector = train_detector(
            micrographs, epochs=int(epochs), batch_size=int(batch_size), seed=seed, progress=progress, checkpoint=state
        )
        detector.info["annotations"] = str(annotations.source)
        detector.save(tmp)
        publish_output_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the checkpoint stays: the next attempt resumes from it
        raise
    state.remove()
    result.resumed_after = int(detector.info.get("resumed_after_epoch", 0))
    result.final_loss = float(detector.info.get("final_loss", float("nan")))
    result.seconds = time.perf_counter() - started
    return result


def _training_micrographs(annotations, nm_per_px, result: DetectorTrainingResult) -> list[TrainingMicrograph]:
    """One TrainingMicrograph per usable micrograph (boxes in its own pixels); the rest counted in `result`."""
    by_micrograph: dict[Path, list] = {p: [] for p in annotations.micrographs}
    for a in annotations.items:
        by_micrograph[a.micrograph].append(a)
    base = annotations.base or annotations.source.parent
    out = []
    for path, items in by_micrograph.items():
        boxed = [a for a in items if a.box is not None]
        result.points += len(items) - len(boxed)
        if items and not boxed:
            result.points_only += 1
            continue
        try:
            micrograph = read_micrograph(path)
        except DecodeError as exc:
            result.unreadable.append(f"{shown_path(path, base)}: {exc.reason}")
            continue
        nm, how = pixel_size(micrograph, nm_per_px, DEFAULT_NM_PER_PX)
        result.scale_sources[how] += 1
        h, w = micrograph.shape
        kept = []
        for a in (a.in_pixels(w, h) for a in boxed):
            if 0 <= a.x < w and 0 <= a.y < h:
                kept.append(a.box)
            else:
                result.bad.append(f"{a.where}: centre ({a.x:g}, {a.y:g}) is outside the image ({w} x {h} px)")
        out.append(TrainingMicrograph(micrograph.pixels, nm, np.asarray(kept, float).reshape(-1, 4)))
        result.micrographs += 1
        result.boxes += len(kept)
    return out


# ------------------------------------------------------------------------------ checkpoints


def state_folder(out: Path) -> Path:
    """The hidden folder beside `out` that holds the checkpoint of its training."""
    return out.parent / f".{out.name}{STATE_SUFFIX}"


class TrainingState:
    """The checkpoint of one detector training: the state of its last finished epoch.

    Files: `state.json` (the fingerprint, epochs done, per-epoch losses, the random generator's state
    and the names of the other two), `weights-eNNNN.weights.h5` (the model's weights, moving
    batch-norm statistics included) and `optimizer-eNNNN.npz` (the optimizer's variables, iteration
    counter first, as plain arrays). Why this order: each epoch's files get new names and are
    written atomically before `state.json` is replaced (atomically) to name them, so a kill at any
    instant leaves the previous epoch's checkpoint whole; files that `state.json` does not name are
    debris of an interrupted save and are removed.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.fingerprint: str | None = None

    def resume(self, fingerprint: str, model, rng: np.random.Generator, epochs: int) -> list[float]:
        """Restore `model` (compiled, optimizer built) and `rng` from the checkpoint when it is of the
        same training (`fingerprint`) and return its per-epoch losses; [] to start from epoch 1 (no
        checkpoint, or a stale or damaged one, which is removed with one line saying so)."""
        self.fingerprint = fingerprint
        record = self.folder / STATE_FILE
        if not record.is_file():
            shutil.rmtree(self.folder, ignore_errors=True)  # debris of a first epoch that never finished
            return []
        try:
            losses = self._restore(fingerprint, model, rng, epochs)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(
                f"virion detector: ignoring the checkpoint in {self.folder} ({exc}); training from epoch 1", flush=True
            )
            shutil.rmtree(self.folder, ignore_errors=True)
            return []
        print(f"virion detector: resuming the training at epoch {len(losses) + 1}/{epochs} "
              f"(checkpoint in {self.folder})", flush=True)  # fmt: skip
        return losses

    def _restore(self, fingerprint: str, model, rng: np.random.Generator, epochs: int) -> list[float]:
        """Check all that can be checked before changing anything, and undo a weights load that
        fails, so a stale or damaged checkpoint leaves `model` and `rng` as they were."""
        record = json.loads((self.folder / STATE_FILE).read_text(encoding="utf-8"))
        if not isinstance(record, dict) or record.get("format") != STATE_FORMAT:
            raise ValueError(f"{STATE_FILE} is not a detector checkpoint")
        if record.get("fingerprint") != fingerprint:
            raise ValueError("it is of another training: other micrographs, boxes or settings")
        losses = [float(v) for v in record["losses"]]
        if not 1 <= len(losses) <= epochs or len(losses) != int(record["epochs_done"]):
            raise ValueError(f"{STATE_FILE} counts {record['epochs_done']} epochs")
        type(rng.bit_generator)().state = record["rng"]  # raises on a state of another kind
        variables = model.optimizer.variables
        with np.load(self.folder / _name(record, "optimizer"), allow_pickle=False) as npz:
            values = [npz[f"v{i:04d}"] for i in range(len(npz.files))]
        shapes = [tuple(v.shape) for v in variables]
        if [a.shape for a in values] != shapes:
            raise ValueError("the optimizer's variables do not fit the network")
        built = model.get_weights()
        try:
            model.load_weights(self.folder / _name(record, "weights"))
        except BaseException:
            model.set_weights(built)
            raise
        for variable, value in zip(variables, values):
            variable.assign(value)
        rng.bit_generator.state = record["rng"]
        return losses

    def commit(self, model, rng: np.random.Generator, losses: list[float]) -> None:
        """Checkpoint the epoch just finished (see the class docstring for why in this order)."""
        from keras import ops

        done = len(losses)
        crash_point("epoch_end")
        self.folder.mkdir(parents=True, exist_ok=True)
        weights, optimizer = f"weights-e{done:04d}.weights.h5", f"optimizer-e{done:04d}.npz"
        atomic_write(self.folder / weights, model.save_weights)
        values = {f"v{i:04d}": ops.convert_to_numpy(v) for i, v in enumerate(model.optimizer.variables)}
        atomic_write(self.folder / optimizer, lambda tmp: np.savez(tmp, **values))
        crash_point("before_commit")
        record = {
            "format": STATE_FORMAT,
            "fingerprint": self.fingerprint,
            "epochs_done": done,
            "losses": losses,
            "rng": rng.bit_generator.state,
            "weights": weights,
            "optimizer": optimizer,
        }
        atomic_write_text(self.folder / STATE_FILE, json.dumps(record, indent=1) + "\n")
        crash_point("after_commit")
        for path in self.folder.iterdir():
            if path.name not in (STATE_FILE, weights, optimizer):
                path.unlink(missing_ok=True)

    def remove(self) -> None:
        """Delete the checkpoint (its detector is published)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _name(record: dict, key: str) -> str:
    """A file name from state.json, refused unless it is a plain name in the folder."""
    name = str(record[key])
    if Path(name).name != name or name.startswith("."):
        raise ValueError(f"{STATE_FILE} names {name!r}")
    return name
