"""Particle annotations on whole micrographs: a boxes CSV or YOLO label folders, read without crashing on bad rows.

Two inputs, one result (`Annotations`):
- a CSV with a header: `path,label` and either `xmin,ymin,xmax,ymax` (a box, pixels) or `x,y` (a
  point, pixels); other columns are allowed; `path` is relative to the CSV's folder; an optional
  `session` (or `group`) column names the group each micrograph belongs to;
- YOLO label folders: one `<image stem>.txt` per image, lines `class cx cy w h` normalized to the
  image size, a class list (one name per line; line n is class n) and the images folder.

A row that cannot be used (unparsable number, negative or empty size, unknown file, unknown class,
missing group) becomes one line in `Annotations.bad` and is skipped; only an unusable file as a
whole (no header, missing columns) is a `VirionError`. Checks that need the image (a centre
outside it) are made when the micrograph is read (`micrograph.crops`).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from virion.data.layout import IMAGE_EXTENSIONS
from virion.errors import VirionError

# Group columns of a boxes CSV, the first one present is used.
GROUP_COLUMNS = ("session", "group")
BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")
POINT_COLUMNS = ("x", "y")


@dataclass(frozen=True)
class Annotation:
    """One particle: its micrograph, class, centre and box (None for a point).

    Coordinates are pixels of the micrograph as stored (continuous: pixel i covers [i, i+1)), or
    fractions of its width and height when `normalized` (YOLO), converted once the size is known.
    """

    micrograph: Path
    label: str
    x: float
    y: float
    box: tuple[float, float, float, float] | None
    group: str | None
    where: str  # "boxes.csv line 12": names the row in messages
    normalized: bool = False

    def in_pixels(self, width: int, height: int) -> Annotation:
        """The same annotation in pixels of a `width` x `height` micrograph."""
        if not self.normalized:
            return self
        box = None
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            box = (x0 * width, y0 * height, x1 * width, y1 * height)
        return Annotation(
            self.micrograph, self.label, self.x * width, self.y * height, box, self.group, self.where, False
        )


@dataclass
class Annotations:
    """Every usable annotation, the micrographs they are on, and one line per rejected row."""

    source: Path
    items: list[Annotation]
    bad: list[str] = field(default_factory=list)
    # Every micrograph named by the input, with its group (None: no group column), in input order;
    # YOLO images with an empty label file are here too (background windows may come from them).
    micrographs: dict[Path, str | None] = field(default_factory=dict)
    group_column: str | None = None
    base: Path | None = None  # where micrograph paths are shown from: the CSV's folder or the images folder

    @property
    def labels(self) -> list[str]:
        return sorted({a.label for a in self.items})


def read_class_list(path) -> list[str]:
    """Class names, one per line (blank lines and `#` comments skipped); line n is YOLO class n."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise VirionError(
            f"--classes {path}: cannot read the class list ({exc}); give a text file, one name per line"
        ) from None
    names = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not names:
        raise VirionError(f"--classes {path}: no class names; write one class name per line")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise VirionError(f"--classes {path}: class {dup!r} is listed twice; list each class once")
    return names


def _label_problem(label: str, classes: list[str] | None) -> str | None:
    if not label:
        return "no label"
    if classes is not None and label not in classes:
        return f"unknown class {label!r} (not in --classes)"
    if "/" in label or "\\" in label or label.startswith(".") or label.startswith("_"):
        return f"class name {label!r} cannot be a folder name (no '/', '\\', leading '.' or '_')"
    return None


def _number(text: str | None, name: str) -> float:
    value = float((text or "").strip())
    if not math.isfinite(value):
        raise ValueError(f"{name} is {text!r}")
    return value


def read_boxes_csv(path, *, classes: list[str] | None = None) -> Annotations:
    """Read a boxes CSV (see the module docstring); bad rows are listed, not raised."""
    path = Path(path)
    base, name = path.parent, path.name
    result = Annotations(path, [], base=base)
    found: dict[Path, bool] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [(f or "").strip().lower() for f in (reader.fieldnames or [])]
            reader.fieldnames = fields
            has_box = all(c in fields for c in BOX_COLUMNS)
            has_point = all(c in fields for c in POINT_COLUMNS)
            if "path" not in fields or "label" not in fields or not (has_box or has_point):
                raise VirionError(
                    f"{path}: a boxes CSV needs the columns path,label and xmin,ymin,xmax,ymax (or x,y), found "
                    f"{','.join(fields) or 'nothing'}; add a header row"
                )
            group_column = next((c for c in GROUP_COLUMNS if c in fields), None)
            result.group_column = group_column
            for lineno, row in enumerate(reader, start=2):
                where = f"{name} line {lineno}"
                raw, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
                if not raw and not label and not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                    continue  # blank line
                annotation, problem = _parse_row(row, raw, label, where, base, has_box, group_column, classes, found)
                if problem:
                    result.bad.append(f"{where}: {problem}")
                    continue
                result.items.append(annotation)
                if annotation.micrograph not in result.micrographs:
                    result.micrographs[annotation.micrograph] = annotation.group
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise VirionError(f"{path}: cannot read the boxes CSV ({exc}); give a UTF-8 CSV with a header row") from None
    _check_groups(result)
    return result


def _parse_row(row, raw, label, where, base, has_box, group_column, classes, found):
    if not raw:
        return None, "no path"
    problem = _label_problem(label, classes)
    if problem:
        return None, problem
    file = Path(raw)
    file = file if file.is_absolute() else base / file
    if file not in found:
        found[file] = file.is_file()
    if not found[file]:
        return None, f"unknown file {raw} (paths are relative to the CSV's folder)"
    group = None
    if group_column is not None:
        group = (row.get(group_column) or "").strip()
        if not group:
            return None, f"no {group_column}; fill it in for every row or remove the column"
    use_box = has_box and all((row.get(c) or "").strip() for c in BOX_COLUMNS)
    try:
        if use_box:
            x0, y0, x1, y1 = (_number(row.get(c), c) for c in BOX_COLUMNS)
        else:
            x, y = (_number(row.get(c), c) for c in POINT_COLUMNS)
    except ValueError:
        cols = BOX_COLUMNS if use_box else POINT_COLUMNS
        shown = ",".join(str(row.get(c) or "").strip() or "''" for c in cols)
        return None, f"cannot read the {'box' if use_box else 'point'} ({','.join(cols)} = {shown})"
    if use_box:
        if x1 <= x0 or y1 <= y0:
            return None, f"box has no positive size (xmin {x0:g} xmax {x1:g}, ymin {y0:g} ymax {y1:g})"
        return Annotation(file, label, (x0 + x1) / 2, (y0 + y1) / 2, (x0, y0, x1, y1), group, where), None
    return Annotation(file, label, x, y, None, group, where), None


def _check_groups(result: Annotations) -> None:
    """A micrograph belongs to one group: rows that put it in another are bad rows."""
    first: dict[Path, tuple[str | None, str]] = {}
    kept = []
    for a in result.items:
        group, where = first.setdefault(a.micrograph, (a.group, a.where))
        if a.group != group:
            result.bad.append(
                f"{a.where}: {a.micrograph.name} is in {result.group_column} {a.group!r} here but {group!r} on "
                f"{where}; one micrograph belongs to one {result.group_column}"
            )
            continue
        kept.append(a)
    result.items = kept


def read_yolo(labels_dir, images_dir, classes_file) -> Annotations:
    """Read YOLO label folders: `labels_dir/**/<stem>.txt` beside `images_dir/**/<stem>.<image ext>`."""
    labels_dir, images_dir = Path(labels_dir), Path(images_dir)
    if not labels_dir.is_dir():
        raise VirionError(f"--yolo {labels_dir}: not a folder; give the folder of YOLO .txt label files")
    if not images_dir.is_dir():
        raise VirionError(f"--images {images_dir}: not a folder; give the folder of the labelled images")
    names = read_class_list(classes_file)
    result = Annotations(labels_dir, [], base=images_dir)
    images: dict[Path, Path] = {}  # relative path without suffix -> image
    by_stem: dict[str, list[Path]] = {}
    for image in sorted(images_dir.rglob("*")):
        if image.is_file() and image.suffix.lower() in IMAGE_EXTENSIONS and not image.name.startswith("."):
            images.setdefault(image.relative_to(images_dir).with_suffix(""), image)
            by_stem.setdefault(image.stem, []).append(image)
    label_files = sorted(p for p in labels_dir.rglob("*.txt") if not p.name.startswith("."))
    if not label_files:
        raise VirionError(f"--yolo {labels_dir}: no .txt label files found; give the YOLO labels folder")
    for txt in label_files:
        rel = txt.relative_to(labels_dir)
        shown = (Path(labels_dir.name) / rel).as_posix()
        image = images.get(rel.with_suffix(""))
        if image is None and len(by_stem.get(txt.stem, [])) == 1:
            image = by_stem[txt.stem][0]
        if image is None:
            if txt.stem.lower() in ("classes", "labels"):
                continue  # a class list kept beside the labels
            result.bad.append(f"{shown}: unknown file: no image {txt.stem}.* in --images {images_dir}")
            continue
        result.micrographs.setdefault(image, None)
        try:
            lines = txt.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            result.bad.append(f"{shown}: cannot read ({exc})")
            continue
        for lineno, line in enumerate(lines, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            where = f"{shown} line {lineno}"
            annotation, problem = _parse_yolo_line(line, image, names, where)
            if problem:
                result.bad.append(f"{where}: {problem}")
            else:
                result.items.append(annotation)
    return result


def _parse_yolo_line(line: str, image: Path, names: list[str], where: str):
    parts = line.split()
    if len(parts) < 5:
        return None, f"expected 'class cx cy w h', got {line.strip()!r}"
    try:
        cls = int(parts[0])
        cx, cy, w, h = (_number(p, "value") for p in parts[1:5])
    except ValueError:
        return None, f"cannot read {line.strip()!r} as 'class cx cy w h'"
    if not 0 <= cls < len(names):
        return None, f"unknown class {cls} (the class list has {len(names)} names: 0..{len(names) - 1})"
    problem = _label_problem(names[cls], None)
    if problem:
        return None, problem
    if w <= 0 or h <= 0:
        return None, f"box has no positive size (w {w:g}, h {h:g})"
    box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    return Annotation(image, names[cls], cx, cy, box, None, where, normalized=True), None
