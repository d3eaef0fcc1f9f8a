"""Find the images of a dataset and their labels, whatever folder layout the user brings.

Three layouts are detected automatically:

- split folders: ``DATA/train/<class>/``, ``DATA/test/<class>/`` and optionally
  ``DATA/validation/<class>/`` (or ``val/``), the layout of the public TEM virus dataset;
- class folders: ``DATA/<class>/``, split here into train/validation/test, stratified and seeded;
- a CSV manifest ``path,label[,split][,group]`` (paths relative to the CSV), passed as the CSV file.

Grouped splits: TEM folders hold many crops of one micrograph, which look alike; a random
validation or test split leaks them and overstates accuracy. Give each image a group (the
manifest's ``group`` column, or ``micrograph`` as in a ``path,label,micrograph`` CSV; or
``group_by``, a regular expression on the file name) and the automatic validation/test splits
are made by whole groups, stratified by class as far as the groups allow, seeded.

This module is the one place that decides the class order (sorted names); everything downstream
reads it from the dataset (and later from each model's metadata).
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from virion.errors import VirionError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"}

# Folders that sit beside the classes in the public TEM virus dataset but are not classes.
DEFAULT_EXCLUDE = ("crop_outlines",)
# The one '_' name that is a class: "not a particle" windows cut by `virion crops --background`.
BACKGROUND_CLASS = "_background"

SPLIT_NAMES = ("train", "validation", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "test": "test",
    "testing": "test",
}

# `virion synth` marks a folder it wrote with this file; its "own_files" names the files that it (and
# the demo) keep at the dataset root: virion's own, so not listed as ignored (a user's stray files are).
SYNTH_MARKER = "synth.json"

# Reasons are generic (no file names) so the summary can group them.
R_HIDDEN = "hidden file or folder"
R_NOT_IMAGE = "not an image file ({ext})"
R_UNDERSCORE = "folder starting with '_' is not a class"
R_PATTERN = "class folder excluded by pattern '{pattern}'"
R_NOT_LISTED = "class not in the chosen classes"
R_SUBFOLDER = "sub-folder of a class folder (include_subfolders=True reads it)"
R_LOOSE_FILE = "file outside a class folder"
R_NOT_SPLIT = "not a split folder (train/validation/val/test)"

# The example given to users for `group_by`: everything before the last "_<number>" of the file
# name (without extension), e.g. "B2-65k-071019_18_7.png" -> group "B2-65k-071019_18".
GROUP_BY_EXAMPLE = r"^(.*)_\d+$"
# Manifest columns that hold the group (the first one present is used).
GROUP_COLUMNS = ("group", "micrograph")
# Random greedy orders tried per grouped split; the best-stratified one is kept.
_GROUP_SPLIT_TRIALS = 32


@dataclass
class Split:
    """The files of one split and their integer labels (indices into `Dataset.class_names`)."""

    name: str
    files: list[Path]
    labels: np.ndarray
    groups: list[str] | None = None  # one group name per file (e.g. the source micrograph), or None

    def __post_init__(self) -> None:
        self.files = [Path(f) for f in self.files]
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.files) != len(self.labels):
            raise ValueError(f"split {self.name!r}: {len(self.files)} files but {len(self.labels)} labels")
        if self.groups is not None:
            self.groups = [str(g) for g in self.groups]
            if len(self.groups) != len(self.files):
                raise ValueError(f"split {self.name!r}: {len(self.files)} files but {len(self.groups)} groups")

    @property
    def num_groups(self) -> int | None:
        """Distinct groups in this split, or None when the dataset has no groups."""
        return None if self.groups is None else len(set(self.groups))

    def __len__(self) -> int:
        return len(self.files)


@dataclass
class Dataset:
    """A discovered dataset: class list, the three splits, and what was ignored and why."""

    root: Path
    layout: str
    class_names: list[str]
    splits: dict[str, Split]
    ignored: list[tuple[Path, str]] = field(default_factory=list)
    group_by: str | None = None  # the regex the groups came from; None: a manifest column or no groups

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def grouped(self) -> bool:
        """True when every split knows the group of each file."""
        return bool(self.splits) and all(s.groups is not None for s in self.splits.values())

    def group_counts(self) -> dict[str, int] | None:
        """Distinct groups per split ``{split: n}``, or None without groups."""
        if not self.grouped:
            return None
        return {s: self.splits[s].num_groups for s in SPLIT_NAMES if s in self.splits}

    def shared_groups(self) -> list[str]:
        """Groups found in more than one split (only possible in splits the user made), sorted."""
        if not self.grouped:
            return []
        seen: dict[str, set[str]] = {}
        for name, split in self.splits.items():
            for g in split.groups:
                seen.setdefault(g, set()).add(name)
        return sorted(g for g, where in seen.items() if len(where) > 1)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class for each split: ``{split: {class: n}}`` (every class listed)."""
        out: dict[str, dict[str, int]] = {}
        for name in SPLIT_NAMES:
            split = self.splits.get(name)
            per = (
                np.bincount(split.labels, minlength=self.num_classes)
                if split is not None
                else np.zeros(self.num_classes, dtype=np.int64)
            )
            out[name] = {c: int(n) for c, n in zip(self.class_names, per)}
        return out

    def ignored_counts(self) -> dict[str, int]:
        """How many ignored entries per reason, most frequent first."""
        return dict(Counter(reason for _, reason in self.ignored).most_common())

    def _base_dir(self) -> Path:
        return self.root.parent if self.root.is_file() else self.root

    def relative_path(self, path: Path) -> str:
        """`path` relative to the dataset's folder (a manifest's own folder), as given when not under it."""
        try:
            return Path(path).relative_to(self._base_dir()).as_posix()
        except ValueError:
            return Path(path).as_posix()

    def fingerprint(self) -> str:
        """Hash of relative paths, sizes, mtimes, labels (and groups): changes when the data changes.

        Without groups the hash is what earlier releases wrote, so their runs still match.
        """
        h = hashlib.sha256()
        h.update(json.dumps(self.class_names).encode())
        for name in SPLIT_NAMES:
            split = self.splits.get(name)
            if split is None:
                continue
            h.update(f"\n[{name}]".encode())
            for f, label in zip(split.files, split.labels):
                try:
                    st = os.stat(f)
                    size, mtime = st.st_size, st.st_mtime_ns
                except OSError:
                    size, mtime = -1, -1
                h.update(f"\n{self.relative_path(f)}\t{size}\t{mtime}\t{int(label)}".encode())
            if split.groups is not None:
                h.update(("\n[groups]\n" + "\n".join(split.groups)).encode())
        return h.hexdigest()

    def summary(self) -> str:
        """The text shown at the start of training: classes, a count table, what was ignored."""
        counts = self.counts()
        splits = [s for s in SPLIT_NAMES if s in self.splits]
        width = max([len("class"), len("total")] + [len(c) for c in self.class_names])
        lines = [
            f"Dataset {self.root} ({self.layout} layout): {self.num_classes} classes, "
            + ", ".join(f"{len(self.splits[s])} {s}" for s in splits)
        ]
        header = f"  {'class':<{width}}" + "".join(f" {s:>10}" for s in splits)
        lines += [header, "  " + "-" * (len(header) - 2)]
        for c in self.class_names:
            lines.append(f"  {c:<{width}}" + "".join(f" {counts[s][c]:>10}" for s in splits))
        lines.append(f"  {'total':<{width}}" + "".join(f" {len(self.splits[s]):>10}" for s in splits))
        groups = self.group_counts()
        if groups is not None:
            lines.append(f"  {'groups':<{width}}" + "".join(f" {groups[s]:>10}" for s in splits))
            source = f"group_by '{self.group_by}'" if self.group_by else "the manifest's group column"
            lines.append(f"Groups from {source}: validation/test splits made here hold whole groups.")
            shared = self.shared_groups()
            if shared:
                lines.append(
                    f"Note: {len(shared)} group(s) appear in more than one of the given splits, "
                    f"e.g. {shared[0]!r}: those splits leak."
                )
        if self.ignored:
            lines.append(f"Ignored {len(self.ignored)} entries:")
            for reason, n in self.ignored_counts().items():
                examples = [self.relative_path(p) for p, r in self.ignored if r == reason][:3]
                more = ", ..." if n > len(examples) else ""
                lines.append(f"  {n:>6}  {reason}: {', '.join(examples)}{more}")
        else:
            lines.append("Ignored nothing.")
        return "\n".join(lines)

    def to_json(self) -> dict:
        """What the run folder's dataset.json holds."""
        return {
            "root": str(self.root),
            "layout": self.layout,
            "class_names": list(self.class_names),
            "counts": self.counts(),
            "sizes": {s: len(self.splits[s]) for s in SPLIT_NAMES if s in self.splits},
            "ignored_counts": self.ignored_counts(),
            "ignored": [{"path": self.relative_path(p), "reason": r} for p, r in self.ignored],
            "fingerprint": self.fingerprint(),
            "group_by": self.group_by,
            "group_counts": self.group_counts(),
        }


# --------------------------------------------------------------------------------------------
# discovery helpers


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _image_files(
    folder: Path, include_subfolders: bool, ignored: list[tuple[Path, str]], exclude: tuple[str, ...] = DEFAULT_EXCLUDE
) -> list[Path]:
    """Image files of one class folder, sorted; everything else goes to `ignored` with a reason.

    With `include_subfolders`, sub-folders are read too, except those that would not be classes
    either (`_EXCLUDED`, `crop_outlines`, hidden, `exclude` patterns).
    """
    found: list[Path] = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if _is_hidden(entry.name):
            ignored.append((entry, R_HIDDEN))
        elif entry.is_dir():
            reason = _class_reason(entry.name, exclude) if include_subfolders else R_SUBFOLDER
            if reason:
                ignored.append((entry, reason))
            else:
                found.extend(_image_files(entry, True, ignored, exclude))
        elif entry.suffix.lower() in IMAGE_EXTENSIONS:
            found.append(entry)
        else:
            ignored.append((entry, R_NOT_IMAGE.format(ext=entry.suffix.lower() or "no extension")))
    return found


def _class_reason(name: str, exclude: tuple[str, ...]) -> str | None:
    """Why a folder/label is not a class, or None if it is one."""
    if _is_hidden(name):
        return R_HIDDEN
    if name.startswith("_") and name != BACKGROUND_CLASS:
        return R_UNDERSCORE
    for pattern in exclude:
        if fnmatch.fnmatchcase(name, pattern):
            return R_PATTERN.format(pattern=pattern)
    return None


def own_files(root: Path) -> frozenset[str]:
    """Names of the files at `root` that virion's synth writer lists as its own in its marker."""
    try:
        info = json.loads((Path(root) / SYNTH_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return frozenset()
    names = info.get("own_files") if isinstance(info, dict) and info.get("generator") == "virion synth" else None
    if not isinstance(names, list):
        return frozenset()
    return frozenset(n for n in names if isinstance(n, str) and n == Path(n).name)


def _class_folders(
    root: Path, exclude: tuple[str, ...], ignored: list[tuple[Path, str]], own: frozenset[str] = frozenset()
) -> dict[str, Path]:
    """Class name -> folder for the direct sub-folders of `root` that are classes (`own`: files to pass over)."""
    classes: dict[str, Path] = {}
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name in own and entry.is_file():
            continue
        if not entry.is_dir():
            ignored.append((entry, R_HIDDEN if _is_hidden(entry.name) else R_LOOSE_FILE))
            continue
        reason = _class_reason(entry.name, exclude)
        if reason:
            ignored.append((entry, reason))
        else:
            classes[entry.name] = entry
    return classes


def _check_classes_option(classes: list[str] | None, available: set[str], where: str) -> None:
    if classes is None:
        return
    unknown = [c for c in classes if c not in available]
    if unknown:
        raise VirionError(
            f"--classes: unknown class {unknown[0]!r} in {where}; choose from: {', '.join(sorted(available))}"
        )


def _split_off(
    files: list[Path], labels: np.ndarray, fraction: float, seed: int, what: str, class_names: list[str], where: str
) -> tuple[list[Path], np.ndarray, list[Path], np.ndarray]:
    """Hold out `fraction` of the files, stratified by class and seeded (sklearn)."""
    if fraction <= 0 or len(files) == 0:
        return files, labels, [], np.zeros(0, dtype=np.int64)
    from sklearn.model_selection import train_test_split

    per_class = np.bincount(labels, minlength=len(class_names))
    smallest = int(np.argmin(np.where(per_class > 0, per_class, np.iinfo(np.int64).max)))
    if per_class[smallest] < 2:
        raise VirionError(
            f"{where}: class {class_names[smallest]!r} has only {per_class[smallest]} image(s); "
            f"a stratified {what} split needs at least 2 per class: add images or provide a "
            f"{what}/ split"
        )
    idx = np.arange(len(files))
    try:
        keep, hold = train_test_split(idx, test_size=fraction, random_state=seed, stratify=labels)
    except ValueError as exc:
        raise VirionError(
            f"{where}: cannot make a stratified {what} split of {len(files)} images "
            f"({exc}); add images or change the {what} fraction"
        ) from None
    keep, hold = np.sort(keep), np.sort(hold)
    return ([files[i] for i in keep], labels[keep], [files[i] for i in hold], labels[hold])


def _split_off_groups(
    files: list[Path],
    labels: np.ndarray,
    groups: list[str],
    fraction: float,
    seed: int,
    what: str,
    class_names: list[str],
    where: str,
):
    """Hold out about `fraction` of the files as whole groups, stratified by class as far as groups allow.

    Seeded greedy: groups are visited in a random order and one is held out when that brings every
    class's held-out share closer to `fraction` (each class weighs the same, whatever its size),
    never taking a class's last training group. The best of several orders is kept. Deterministic
    for a given seed and input order.
    """
    empty = ([], np.zeros(0, dtype=np.int64), [])
    if fraction <= 0 or len(files) == 0:
        return files, labels, groups, *empty
    names = sorted(set(groups))
    if len(names) < 2:
        raise VirionError(
            f"{where}: all {len(files)} images are in one group ({names[0]!r}); a grouped {what} "
            f"split needs at least 2 groups: check the group column or group_by pattern"
        )
    gidx = {g: i for i, g in enumerate(names)}
    per_file = np.array([gidx[g] for g in groups], dtype=np.int64)
    num_classes = len(class_names)
    counts = np.zeros((len(names), num_classes), dtype=np.float64)  # images per (group, class)
    np.add.at(counts, (per_file, labels), 1.0)
    totals = counts.sum(axis=0)
    present = totals > 0
    target = fraction * totals
    weight = np.where(present, 1.0 / np.maximum(totals, 1.0), 0.0)

    def cost(held: np.ndarray) -> float:
        return float(np.sum(np.abs(held - target) * weight))

    rng = np.random.default_rng(seed)
    trials = max(1, min(_GROUP_SPLIT_TRIALS, 50_000 // len(names)))
    best: tuple[float, np.ndarray] | None = None
    for _ in range(trials):
        held = np.zeros(num_classes)
        chosen = np.zeros(len(names), dtype=bool)
        current = cost(held)
        for g in rng.permutation(len(names)):
            after = held + counts[g]
            if np.any(present & (after >= totals) & (counts[g] > 0)):
                continue  # would leave a class without training images
            c = cost(after)
            if c < current:
                held, current, chosen[g] = after, c, True
        if not chosen.any():  # every group is too big for the fraction: hold out the one that fits best
            fits = [
                (cost(counts[g]), g)
                for g in range(len(names))
                if not np.any(present & (counts[g] >= totals) & (counts[g] > 0))
            ]
            if not fits:
                raise VirionError(
                    f"{where}: every group holds all images of some class, so no grouped {what} "
                    f"split can leave them in training: add groups or provide a {what}/ split"
                )
            current, g = min(fits)
            chosen[g] = True
        if best is None or current < best[0]:
            best = (current, chosen)
    hold_mask = best[1][per_file]
    keep, hold = np.flatnonzero(~hold_mask), np.flatnonzero(hold_mask)
    return (
        [files[i] for i in keep],
        labels[keep],
        [groups[i] for i in keep],
        [files[i] for i in hold],
        labels[hold],
        [groups[i] for i in hold],
    )


def _hold_out(files, labels, groups, fraction, seed, what, class_names, where):
    """Grouped hold-out when groups are known, else the plain stratified one; groups follow the files."""
    if groups is not None:
        return _split_off_groups(files, labels, groups, fraction, seed, what, class_names, where)
    kf, kl, hf, hl = _split_off(files, labels, fraction, seed, what, class_names, where)
    return kf, kl, None, hf, hl, None


def _compile_group_by(group_by: str | None):
    if group_by is None:
        return None
    if not isinstance(group_by, str) or not group_by:
        raise VirionError(f"group_by={group_by!r}: give a regular expression, e.g. {GROUP_BY_EXAMPLE!r}")
    try:
        return re.compile(group_by)
    except re.error as exc:
        raise VirionError(
            f"group_by={group_by!r} is not a valid regular expression ({exc}); e.g. {GROUP_BY_EXAMPLE!r}"
        ) from None


def group_of(path, pattern) -> str:
    """The group of one file: `pattern` searched in the file name without its extension.

    Capture group 1 when the pattern has one, else the whole match. A name that does not match is
    a user mistake (a silent fallback would put such files in one big group).
    """
    regex = pattern if isinstance(pattern, re.Pattern) else _compile_group_by(pattern)
    stem = Path(path).stem
    m = regex.search(stem)
    value = None if m is None else (m.group(1) if regex.groups else m.group(0))
    if not value:
        raise VirionError(
            f"{path}: file name {stem!r} does not match group_by {regex.pattern!r}"
            + (" (its group is empty)" if m is not None else "")
            + f"; fix the pattern (e.g. {GROUP_BY_EXAMPLE!r}) or rename the file"
        )
    return value


def _groups_for(files: list[Path], regex) -> list[str] | None:
    return None if regex is None else [group_of(f, regex) for f in files]


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= float(value) < 1.0:
        raise VirionError(f"{name}={value}: must be at least 0 and below 1 (e.g. 0.2)")


# --------------------------------------------------------------------------------------------
# the three layouts


def _find_split_dirs(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for entry in root.iterdir():
        split = _SPLIT_ALIASES.get(entry.name.lower()) if entry.is_dir() else None
        if split is None:
            continue
        if split in found:
            raise VirionError(
                f"{root}: both {found[split].name}/ and {entry.name}/ hold the {split} split; keep one of them"
            )
        found[split] = entry
    return found


def _load_split_folders(
    root: Path,
    split_dirs: dict[str, Path],
    classes,
    exclude,
    include_subfolders,
    val_fraction,
    test_fraction,
    seed,
    regex=None,
) -> Dataset:
    ignored: list[tuple[Path, str]] = []
    own = own_files(root)
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name in own and entry.is_file():
            continue
        if entry not in split_dirs.values():
            reason = R_HIDDEN if _is_hidden(entry.name) else (R_NOT_SPLIT if entry.is_dir() else R_LOOSE_FILE)
            ignored.append((entry, reason))
    if "train" not in split_dirs:
        raise VirionError(
            f"{root}: found {', '.join(sorted(p.name + '/' for p in split_dirs.values()))} but no "
            f"train/ folder; add {root / 'train'} with one sub-folder per class"
        )
    per_split = {s: _class_folders(d, exclude, ignored) for s, d in split_dirs.items()}
    train_classes = set(per_split["train"])
    for s, folders in per_split.items():
        extra = sorted(c for c in set(folders) - train_classes if classes is None or c in classes)
        if extra:
            raise VirionError(
                f"{folders[extra[0]]}: class {extra[0]!r} is in {s}/ but not in train/; "
                f"add its training images or exclude it (--exclude)"
            )
    _check_classes_option(classes, train_classes, f"{split_dirs['train']}")
    if classes is not None:
        for folders in per_split.values():
            for name in [n for n in folders if n not in classes]:
                ignored.append((folders.pop(name), R_NOT_LISTED))
    class_names = sorted(per_split["train"])
    _check_enough_classes(class_names, split_dirs["train"])
    index = {c: i for i, c in enumerate(class_names)}
    gathered: dict[str, tuple[list[Path], np.ndarray]] = {}
    for s, folders in per_split.items():
        files, labels = [], []
        for name in sorted(folders):
            found = _image_files(folders[name], include_subfolders, ignored, exclude)
            if not found:
                raise VirionError(
                    f"{folders[name]}: class folder has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                    f"add images or remove/exclude the folder"
                )
            files += found
            labels += [index[name]] * len(found)
        gathered[s] = (files, np.asarray(labels, dtype=np.int64))
    where = str(split_dirs["train"])
    gathered = {s: (f, lab, _groups_for(f, regex)) for s, (f, lab) in gathered.items()}
    splits = _auto_splits(gathered, val_fraction, test_fraction, seed, class_names, where)
    return Dataset(
        root, "split-folders", class_names, splits, ignored, group_by=regex.pattern if regex is not None else None
    )


def _auto_splits(gathered: dict, val_fraction, test_fraction, seed, class_names, where) -> dict[str, Split]:
    """Fill in the missing test, then validation split from train (grouped when groups are known)."""
    train_files, train_labels, train_groups = gathered["train"]
    if "test" not in gathered:
        train_files, train_labels, train_groups, *held = _hold_out(
            train_files, train_labels, train_groups, test_fraction, seed, "test", class_names, where
        )
        gathered["test"] = tuple(held)
    if "validation" not in gathered:
        train_files, train_labels, train_groups, *held = _hold_out(
            train_files, train_labels, train_groups, val_fraction, seed, "validation", class_names, where
        )
        gathered["validation"] = tuple(held)
    gathered["train"] = (train_files, train_labels, train_groups)
    return {s: Split(s, *gathered[s]) for s in SPLIT_NAMES}


def _check_enough_classes(
    class_names: list[str], where: Path, fix: str = "put each class's images in its own sub-folder"
) -> None:
    if len(class_names) < 2:
        found = f"only {class_names[0]!r}" if class_names else "none"
        raise VirionError(f"{where}: need at least two classes, found {found}; {fix}")


def _load_class_folders(
    root: Path, classes, exclude, include_subfolders, val_fraction, test_fraction, seed, regex=None
) -> Dataset:
    ignored: list[tuple[Path, str]] = []
    folders = _class_folders(root, exclude, ignored, own_files(root))
    _check_classes_option(classes, set(folders), str(root))
    if classes is not None:
        for name in [n for n in folders if n not in classes]:
            ignored.append((folders.pop(name), R_NOT_LISTED))
    class_names = sorted(folders)
    _check_enough_classes(class_names, root)
    files: list[Path] = []
    labels: list[int] = []
    for i, name in enumerate(class_names):
        found = _image_files(folders[name], include_subfolders, ignored, exclude)
        if not found:
            raise VirionError(
                f"{folders[name]}: class folder has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                f"add images or remove/exclude the folder"
            )
        files += found
        labels += [i] * len(found)
    lab = np.asarray(labels, dtype=np.int64)
    gathered = {"train": (files, lab, _groups_for(files, regex))}
    splits = _auto_splits(gathered, val_fraction, test_fraction, seed, class_names, str(root))
    return Dataset(
        root, "class-folders", class_names, splits, ignored, group_by=regex.pattern if regex is not None else None
    )


def _load_manifest(csv_path: Path, classes, exclude, val_fraction, test_fraction, seed, regex=None) -> Dataset:
    base = csv_path.parent
    ignored: list[tuple[Path, str]] = []
    rows: list[tuple[Path, str, str | None, str | None]] = []
    group_column = None
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip().lower() for f in (reader.fieldnames or [])]
            if "path" not in fields or "label" not in fields:
                raise VirionError(
                    f"{csv_path}: manifest needs a header row 'path,label[,split][,group]', found "
                    f"{','.join(reader.fieldnames or []) or 'nothing'}"
                )
            reader.fieldnames = fields
            has_split = "split" in fields
            group_column = next((c for c in GROUP_COLUMNS if c in fields), None)
            if group_column is not None and regex is not None:
                raise VirionError(
                    f"{csv_path}: the manifest has a '{group_column}' column and group_by "
                    f"{regex.pattern!r} was given too; use one of them"
                )
            missing: list[str] = []
            for lineno, row in enumerate(reader, start=2):
                raw, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
                if not raw and not label:
                    continue  # blank line
                if not raw or not label:
                    raise VirionError(f"{csv_path}: line {lineno} needs both a path and a label")
                split = None
                if has_split:
                    value = (row.get("split") or "").strip().lower()
                    split = _SPLIT_ALIASES.get(value)
                    if split is None:
                        raise VirionError(
                            f"{csv_path}: line {lineno}: unknown split {value!r}; "
                            f"use train, validation (or val) or test"
                        )
                group = None
                if group_column is not None:
                    group = (row.get(group_column) or "").strip()
                    if not group:
                        raise VirionError(
                            f"{csv_path}: line {lineno} has no {group_column}; fill it in "
                            f"for every row or remove the column"
                        )
                path = Path(raw)
                path = path if path.is_absolute() else base / path
                if not path.is_file():
                    missing.append(f"line {lineno}: {raw}")
                    continue
                rows.append((path, label, split, group))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise VirionError(
            f"{csv_path}: cannot read the manifest ({exc}); give a UTF-8 CSV 'path,label[,split][,group]'"
        ) from None
    if missing:
        raise VirionError(
            f"{csv_path}: {len(missing)} listed file(s) do not exist, first {missing[0]} "
            f"(paths are relative to the CSV's folder); fix the paths or remove the rows"
        )

    kept = []
    for path, label, split, group in rows:
        reason = _class_reason(label, exclude)
        if reason:
            ignored.append((path, reason))
        elif path.suffix.lower() not in IMAGE_EXTENSIONS:
            ignored.append((path, R_NOT_IMAGE.format(ext=path.suffix.lower() or "no extension")))
        else:
            if regex is not None:
                group = group_of(path, regex)
            kept.append((path, label, split, group))
    grouped = group_column is not None or regex is not None
    train_labels = {lab for _, lab, s, _ in kept if s in (None, "train")}
    for _, label, split, _ in kept:
        if label not in train_labels and (classes is None or label in classes):
            raise VirionError(
                f"{csv_path}: class {label!r} is in the {split} split but not in train; "
                f"add its training rows or exclude it (--exclude)"
            )
    _check_classes_option(classes, train_labels, str(csv_path))
    if classes is not None:
        ignored += [(p, R_NOT_LISTED) for p, lab, _, _ in kept if lab not in classes]
        kept = [r for r in kept if r[1] in classes]
    class_names = sorted({lab for _, lab, _, _ in kept})
    _check_enough_classes(class_names, csv_path, "list images of two or more labels in the manifest")
    index = {c: i for i, c in enumerate(class_names)}
    gathered: dict[str, tuple] = {}
    for s in SPLIT_NAMES:
        chosen = [(p, index[lab], g) for p, lab, sp, g in kept if (sp or "train") == s]
        if chosen or any(sp == s for _, _, sp, _ in kept):
            gathered[s] = (
                [p for p, _, _ in chosen],
                np.asarray([i for _, i, _ in chosen], dtype=np.int64),
                [g for _, _, g in chosen] if grouped else None,
            )
    splits = _auto_splits(gathered, val_fraction, test_fraction, seed, class_names, str(csv_path))
    return Dataset(
        csv_path, "manifest", class_names, splits, ignored, group_by=regex.pattern if regex is not None else None
    )


def load_dataset(
    path,
    *,
    classes=None,
    exclude=(),
    include_subfolders=False,
    val_fraction=0.2,
    test_fraction=0.2,
    seed=0,
    group_by: str | None = None,
) -> Dataset:
    """Discover a dataset at `path` (folder or CSV manifest) and return its splits.

    `classes` keeps only the named classes; `exclude` holds fnmatch patterns on class names (added
    to the defaults: folders starting with `_` or `.`, and `crop_outlines`). Without a validation
    split, `val_fraction` of train is held out, stratified by class and seeded; without a test split
    (class folders, or a manifest without test rows), `test_fraction` of all images is held out first.

    Groups (e.g. the source micrograph of each crop) come from a manifest's ``group`` (or
    ``micrograph``) column, or from `group_by`: a regular expression searched in each file name
    without extension, group 1 if it has a capture group, else the whole match; e.g.
    ``r"^(.*)_\\d+$"`` (everything before the last ``_<n>``). With groups, the held-out splits
    take whole groups (no group on two sides), stratified by class as far as groups allow.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise VirionError(
            f"{root}: no such file or folder; pass a dataset folder (class or train/test sub-folders) or a CSV manifest"
        )
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if isinstance(exclude, str):
        exclude = (exclude,)
    exclude = tuple(DEFAULT_EXCLUDE) + tuple(exclude or ())
    if classes is not None:
        classes = [classes] if isinstance(classes, str) else list(classes)
        if not classes:
            classes = None
    regex = _compile_group_by(group_by)
    root = root.resolve()
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise VirionError(
                f"{root}: a dataset is a folder or a CSV manifest (.csv), not a {root.suffix or 'plain'} file"
            )
        return _load_manifest(root, classes, exclude, val_fraction, test_fraction, seed, regex)
    split_dirs = _find_split_dirs(root)
    if split_dirs:
        return _load_split_folders(
            root, split_dirs, classes, exclude, include_subfolders, val_fraction, test_fraction, seed, regex
        )
    return _load_class_folders(root, classes, exclude, include_subfolders, val_fraction, test_fraction, seed, regex)
