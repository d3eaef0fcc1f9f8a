"""One self-contained HTML report per run: open `report.html` in any browser, no server needed.

Every image is embedded as a base64 data URI and the CSS is inline, so the file can be mailed or
archived alone; there is no JavaScript and no external reference. Built with f-strings and
`html.escape` (every value that comes from files or folder names is escaped).
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import json
from html import escape
from pathlib import Path

from virion.errors import VirionError
from virion.evaluation.evaluate import EVALUATION_DIR, model_dirs
from virion.reports.compare import COLUMNS, compare_runs, format_cell

SPLITS = ("train", "validation", "test")
TRANSFER_MODELS = {"xception", "densenet121"}
MAX_SKIPPED_SHOWN = 200

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1200px;
     padding:0 1rem;color:#222;line-height:1.45}
h1{margin-bottom:.2rem} h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
.meta{color:#666;font-size:.9rem}
.banner{padding:.8rem 1rem;border-radius:6px;font-size:1.1rem;margin:1rem 0;border:2px solid}
.banner.warn{background:#fff3cd;border-color:#e0a800} .banner.ok{background:#e7f5ea;border-color:#3c9a55}
table{border-collapse:collapse;margin:.6rem 0;font-size:.88rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right} th{background:#f3f3f3}
td.l,th.l{text-align:left}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.3rem 0}
.grid{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start} .grid figure{margin:0;flex:1 1 480px}
figcaption{color:#555;font-size:.85rem}
pre{background:#f7f7f7;padding:.6rem;overflow:auto;font-size:.8rem;max-height:20rem}
"""


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _img(path: Path, alt: str) -> str:
    """An <img> with the PNG inlined as a data URI, or a note when the file is missing."""
    if not path.is_file():
        return f'<p class="meta">({escape(path.name)} not found)</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def _figure(path: Path, caption: str) -> str:
    return f"<figure>{_img(path, caption)}<figcaption>{escape(caption)}</figcaption></figure>"


def _table(header: list[str], rows: list[list], left: int = 1) -> str:
    """A plain table; the first `left` columns are text (left-aligned)."""
    def cell(tag, i, v):
        cls = ' class="l"' if i < left else ""
        return f"<{tag}{cls}>{escape(str(v))}</{tag}>"
    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _weights_statement(models: list[tuple[str, dict]]) -> tuple[str, str]:
    """(css class, sentence): plainly whether the transfer models started from ImageNet weights."""
    transfer = [(name, str(meta.get("weights", "unknown"))) for name, meta in models
                if name in TRANSFER_MODELS or meta.get("kind") == "transfer"]
    if not transfer:
        return "ok", "No transfer-learning model in this run: every model was trained from random initialization."
    random_init = [n for n, w in transfer if w.lower() == "none"]
    imagenet = [n for n, w in transfer if w.lower() == "imagenet"]
    files = [(n, w) for n, w in transfer if w.lower() not in {"none", "imagenet"}]
    parts = []
    if random_init:
        parts.append(f"ImageNet weights were NOT used for {', '.join(random_init)}: trained from random "
                     "initialization (not transfer learning).")
    if imagenet:
        parts.append(f"ImageNet pre-trained weights were used for {', '.join(imagenet)}.")
    for n, w in files:
        parts.append(f"{n} started from the local weights file {w}.")
    if any(n == "resnet50" for n, _ in models):
        parts.append("ResNet-50 is always trained from scratch.")
    return ("warn" if random_init else "ok"), " ".join(parts)


def _path_reason(entry) -> list:
    """dataset.json lists entries as {"path", "reason"} (or [path, reason] pairs)."""
    if isinstance(entry, dict):
        return [entry.get("path", ""), entry.get("reason", "")]
    if isinstance(entry, (list, tuple)):
        return [*entry[:2], ""][:2]
    return [entry, ""]


def _dataset_section(run_dir: Path, config: dict) -> str:
    info = _read_json(run_dir / "dataset.json") or {}
    out = ["<h2>Dataset</h2>"]
    root = info.get("root") or config.get("data")
    if root:
        out.append(f"<p>Source: <code>{escape(str(root))}</code>"
                   + (f" ({escape(str(info['layout']))} layout)" if info.get("layout") else "") + "</p>")
    classes = list(info.get("class_names") or info.get("classes") or [])
    counts = info.get("counts") or {}
    if counts and not set(counts) & set(SPLITS):  # class -> split -> n: turn it split-major
        flipped: dict = {}
        for cls, per_split in counts.items():
            for split, n in (per_split or {}).items():
                flipped.setdefault(split, {})[cls] = n
        counts = flipped
    if not classes:
        classes = sorted({c for per in counts.values() for c in (per or {})})
    if classes:
        splits = [s for s in SPLITS if s in counts] + [s for s in counts if s not in SPLITS]
        rows = [[c, *[(counts.get(s) or {}).get(c, 0) for s in splits]] for c in classes]
        rows.append(["total", *[sum((counts.get(s) or {}).values()) for s in splits]])
        out.append(f"<p>{len(classes)} classes.</p>")
        out.append(_table(["class", *splits], rows))
    else:
        out.append('<p class="meta">(dataset.json not found: no dataset summary)</p>')
    if info.get("fingerprint"):
        out.append(f'<p class="meta">fingerprint {escape(str(info["fingerprint"]))}</p>')
    ignored = [_path_reason(x) for x in info.get("ignored") or []]
    if ignored:
        more = [["…", f"and {len(ignored) - MAX_SKIPPED_SHOWN} more"]] if len(ignored) > MAX_SKIPPED_SHOWN else []
        out.append(f"<h3>Ignored while listing the dataset: {len(ignored)}</h3>")
        out.append(_table(["file", "reason"], ignored[:MAX_SKIPPED_SHOWN] + more, left=2))
    skipped_path = run_dir / "skipped_files.txt"
    skipped = [ln for ln in skipped_path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()] \
        if skipped_path.is_file() else []
    out.append(f"<h3>Skipped files (could not be decoded): {len(skipped)}</h3>")
    if skipped:  # one "path<TAB>reason" per line
        rows = [[*ln.split("\t", 1), ""][:2] for ln in skipped[:MAX_SKIPPED_SHOWN]]
        more = [["…", f"and {len(skipped) - MAX_SKIPPED_SHOWN} more"]] if len(skipped) > MAX_SKIPPED_SHOWN else []
        out.append(_table(["file", "reason"], rows + more, left=2))
    return "\n".join(out)


def _settings_section(config: dict) -> str:
    rows = [[k, v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v)]
            for k, v in config.items()]
    return "<h2>Settings</h2>" + _table(["setting", "value"], rows, left=2)


def _report_table(report: dict) -> str:
    rows = []
    for label, v in report.items():
        if isinstance(v, dict):
            rows.append([label, f"{v['precision']:.4f}", f"{v['recall']:.4f}", f"{v['f1-score']:.4f}",
                         int(v["support"])])
        else:
            rows.append([label, "", "", f"{float(v):.4f}", int(report.get("macro avg", {}).get("support", 0))])
    return _table(["class", "precision", "recall", "F1", "support"], rows)


def _csv_table(path: Path) -> str:
    if not path.is_file():
        return ""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return _table(rows[0], rows[1:]) if rows else ""


def _model_section(model_dir: Path, meta: dict) -> str:
    ev = model_dir / EVALUATION_DIR
    out = [f'<h2 id="{escape(model_dir.name)}">Model: {escape(model_dir.name)}</h2>']
    facts = [("weights", meta.get("weights")), ("input size", meta.get("input_size")),
             ("parameters", f"{meta['params']:,}" if isinstance(meta.get("params"), int) else meta.get("params")),
             ("best epoch", meta.get("best_epoch")), ("best validation accuracy", meta.get("best_val_accuracy")),
             ("training time (s)", meta.get("train_seconds")),
             ("training speed (images/s)", meta.get("images_per_second"))]
    out.append(_table(["fact", "value"], [[k, v] for k, v in facts if v is not None], left=2))
    summary = _read_json(ev / "summary.json")
    if summary is None:
        run = escape(str(model_dir.parent))
        out.append(f'<p class="banner warn">Not evaluated yet: run <code>virion evaluate {run}</code>.</p>')
    else:
        out.append(f"<p>Test set: {summary.get('n_images')} images, accuracy <b>{summary['accuracy']:.4f}</b>, "
                   f"macro F1 <b>{summary['macro_f1']:.4f}</b>, {summary.get('n_mistakes', '?')} mistakes; "
                   f"inference {summary.get('inference_images_per_second', 0):.1f} images/s.</p>")
        if summary.get("warnings"):
            out.append("<ul>" + "".join(f"<li>{escape(w)}</li>" for w in summary["warnings"]) + "</ul>")
    out.append('<div class="grid">' + _figure(ev / "curves.png", "accuracy and loss per epoch") + "</div>")
    out.append('<div class="grid">' + _figure(ev / "confusion_matrix.png", "confusion matrix (counts)")
               + _figure(ev / "confusion_matrix_normalized.png", "confusion matrix (row-normalized)") + "</div>")
    report = _read_json(ev / "classification_report.json")
    if report:
        out.append("<h3>Classification report</h3>" + _report_table(report))
    ref = _csv_table(ev / "per_class_reference_metrics.csv")
    if ref:
        out.append("<h3>Per class, one-vs-rest (reference formulas)</h3>" + ref)
    out.append("<h3>Most confident mistakes</h3>" + _img(ev / "mistakes.png", "most confident mistakes"))
    return "\n".join(out)


def write_report(run_dir: Path) -> Path:
    """Write `run_dir/report.html` from what training and evaluation left in the run folder."""
    run_dir = Path(run_dir)
    dirs = model_dirs(run_dir)
    config = _read_json(run_dir / "config.json")
    if config is None:
        raise VirionError(f"{run_dir / 'config.json'}: missing or unreadable; pass a run folder written by "
                          "`virion train`")
    models = [(d.name, _read_json(d / "metadata.json") or {}) for d in dirs]
    evaluated = all((d / EVALUATION_DIR / "summary.json").is_file() for d in dirs)
    rows = compare_runs([run_dir]) if evaluated else []

    tone, statement = _weights_statement(models)
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [
        f"<h1>virion report: {escape(run_dir.name)}</h1>",
        f'<p class="meta">{escape(str(run_dir.resolve()))} · written {now}</p>',
        f'<p class="banner {tone}"><b>Weights:</b> {escape(statement)}</p>',
        "<p>Models: " + ", ".join(f'<a href="#{escape(n)}">{escape(n)}</a>' for n, _ in models) + "</p>",
        "<h2>Comparison</h2>",
    ]
    if rows:
        cells = [[format_cell(k, r.get(k)) for k, _ in COLUMNS] for r in rows]
        parts.append(_table([t for _, t in COLUMNS], cells, left=2))
        parts.append(_img(run_dir / "comparison.png", "model comparison"))
    else:
        parts.append(f'<p class="banner warn">Not every model is evaluated yet: run <code>virion evaluate '
                     f"{escape(str(run_dir))}</code>.</p>")
    parts.append(_dataset_section(run_dir, config))
    parts.append(_settings_section(config))
    parts.extend(_model_section(d, meta) for d, (_, meta) in zip(dirs, models))
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>virion report: {escape(run_dir.name)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
    path = run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
