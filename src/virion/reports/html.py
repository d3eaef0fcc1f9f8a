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

from virion.atomic import atomic_write_text
from virion.errors import VirionError
from virion.reports.compare import (
    COLUMNS,
    compare_runs,
    evaluate_hint,
    format_cell,
    short_number,
    tta_label,
    tta_title,
    weights_label,
)
from virion.run import layout, store
from virion.run.schema import is_synthetic
from virion.training.faults import crash_point

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
.banner.bad{background:#fde2e1;border-color:#c0392b}
table{border-collapse:collapse;margin:.6rem 0;font-size:.88rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right} th{background:#f3f3f3}
td.l,th.l{text-align:left}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.3rem 0}
.grid{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start} .grid figure{margin:0;flex:1 1 480px}
figcaption{color:#555;font-size:.85rem}
figure.wide{margin:.6rem 0} figure.wide img{width:auto;max-width:100%}
pre{background:#f7f7f7;padding:.6rem;overflow:auto;font-size:.8rem;max-height:20rem}
"""


def _read_json(path: Path) -> dict | None:
    """An evaluation output (summary.json, classification_report.json), or None when absent."""
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


def _figure(path: Path, caption: str, wide: bool = False) -> str:
    cls = ' class="wide"' if wide else ""
    return f"<figure{cls}>{_img(path, caption)}<figcaption>{escape(caption)}</figcaption></figure>"


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
    transfer = [
        (name, str(meta.get("weights", "unknown")))
        for name, meta in models
        if name in TRANSFER_MODELS or meta.get("kind") == "transfer"
    ]
    if not transfer:
        return "ok", "No transfer-learning model in this run: every model was trained from random initialization."
    random_init = [n for n, w in transfer if w.lower() == "none"]
    imagenet = [n for n, w in transfer if w.lower() == "imagenet"]
    files = [(n, w) for n, w in transfer if w.lower() not in {"none", "imagenet"}]
    parts = []
    if random_init:
        parts.append(
            f"ImageNet weights were NOT used for {', '.join(random_init)}: trained from random "
            "initialization (not transfer learning)."
        )
    if imagenet:
        parts.append(f"ImageNet pre-trained weights were used for {', '.join(imagenet)}.")
    for n, w in files:
        parts.append(f"{n} started from the local weights file {w}.")
    if any(n == "resnet50" for n, _ in models):
        parts.append("ResNet-50 is always trained from scratch.")
    return ("warn" if random_init else "ok"), " ".join(parts)


def _dataset_info(run_dir: Path) -> dict:
    """dataset.json as a dict ({} when the run has none)."""
    info = store.read_dataset_info(run_dir)
    return info.to_dict() if info is not None else {}


def _path_reason(entry) -> list:
    """dataset.json lists entries as {"path", "reason"} (or [path, reason] pairs)."""
    if isinstance(entry, dict):
        return [entry.get("path", ""), entry.get("reason", "")]
    if isinstance(entry, (list, tuple)):
        return [*entry[:2], ""][:2]
    return [entry, ""]


def _dataset_section(run_dir: Path, config: dict) -> str:
    info = _dataset_info(run_dir)
    out = ["<h2>Dataset</h2>"]
    root = info.get("root") or config.get("data")
    if root:
        out.append(
            f"<p>Source: <code>{escape(str(root))}</code>"
            + (f" ({escape(str(info['layout']))} layout)" if info.get("layout") else "")
            + "</p>"
        )
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
    skipped_path = run_dir / layout.SKIPPED_FILE
    skipped = (
        [ln for ln in skipped_path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        if skipped_path.is_file()
        else []
    )
    out.append(f"<h3>Skipped files (could not be decoded): {len(skipped)}</h3>")
    if skipped:  # one "path<TAB>reason" per line
        rows = [[*ln.split("\t", 1), ""][:2] for ln in skipped[:MAX_SKIPPED_SHOWN]]
        more = [["…", f"and {len(skipped) - MAX_SKIPPED_SHOWN} more"]] if len(skipped) > MAX_SKIPPED_SHOWN else []
        out.append(_table(["file", "reason"], rows + more, left=2))
    return "\n".join(out)


def _round(value, digits: int = 4):
    """A number with at most `digits` decimals and 4 significant digits (whole numbers stay whole)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return value
    return short_number(value, digits)


def _setting(value) -> str:
    """A setting as people write it: 0.001, "a, b", "rotation 20.0, shift 0.2", "none"."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_setting(v)}" for k, v in value.items()) or "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(_setting(v) for v in value) or "none"
    return str(value)


def _settings_section(config: dict) -> str:
    rows = [[k, _setting(v)] for k, v in config.items()]
    return "<h2>Settings</h2>" + _table(["setting", "value"], rows, left=2)


def _report_table(report: dict) -> str:
    rows = []
    for label, v in report.items():
        if isinstance(v, dict):
            rows.append(
                [label, f"{v['precision']:.4f}", f"{v['recall']:.4f}", f"{v['f1-score']:.4f}", int(v["support"])]
            )
        else:
            rows.append([label, "", "", f"{float(v):.4f}", int(report.get("macro avg", {}).get("support", 0))])
    return _table(["class", "precision", "recall", "F1", "support"], rows)


def _csv_table(path: Path) -> str:
    if not path.is_file():
        return ""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return _table(rows[0], [[_csv_value(v) for v in row] for row in rows[1:]]) if rows else ""


def _csv_value(text: str) -> str:
    """CSV cells keep 6 decimals for diffing; the page shows 4."""
    if "." not in text:
        return text
    try:
        return short_number(float(text))
    except ValueError:
        return text


def _tta_words(summary: dict) -> str:
    """ " with 8-way test-time augmentation (...)" for an evaluation that used it, else ""."""
    if not summary.get("tta"):
        return ""
    return f" with {tta_label(summary)} test-time augmentation (mean over each image's flips and 90-degree turns)"


def _model_section(model_dir: Path, meta: dict, data_name: str | None = None, variant: str | None = None) -> str:
    ev = layout.evaluation_dir(model_dir, data_name, variant)
    name = model_dir.name
    out = [f'<h2 id="{escape(name)}">Model: {escape(name)}</h2>']
    if meta.get("status") == "failed":  # no model file, nothing evaluated: say why, plainly
        why = escape(str(meta.get("failure") or "no reason recorded"))
        return "\n".join(
            [
                *out,
                f'<p class="banner bad"><b>Training failed:</b> {why}. No model was saved; this '
                "model is left out of the evaluation and comparison.</p>",
            ]
        )
    facts = [
        ("weights", weights_label(meta.get("weights")) or None),
        ("input size", meta.get("input_size")),
        ("parameters", f"{meta['params']:,}" if isinstance(meta.get("params"), int) else meta.get("params")),
        ("best epoch", meta.get("best_epoch")),
        ("best validation accuracy", _round(meta.get("best_val_accuracy"))),
        ("best validation macro F1", _round(meta.get("best_val_macro_f1"))),
        ("training time (s)", _round(meta.get("train_seconds"), 1)),
        ("training speed (images/s)", _round(meta.get("images_per_second"), 1)),
    ]
    out.append(_table(["fact", "value"], [[k, v] for k, v in facts if v is not None], left=2))
    summary = _read_json(ev / "summary.json")
    if summary is None:
        hint = escape(evaluate_hint(model_dir.parent, data_name, variant))
        out.append(f'<p class="banner warn">Not evaluated yet: run <code>{hint}</code>.</p>')
    else:
        top5 = summary.get("top5_accuracy")
        data = f" of {escape(str(summary['data']))}" if summary.get("data") else ""
        out.append(
            f"<p>Test set{data}{escape(_tta_words(summary))}: {summary.get('n_images')} images, "
            f"accuracy <b>{summary['accuracy']:.4f}</b>"
            + (f", top-5 accuracy {top5:.4f}" if isinstance(top5, (int, float)) else "")
            + f", macro F1 <b>{summary['macro_f1']:.4f}</b>, {summary.get('n_mistakes', '?')} mistakes; "
            f"inference {short_number(summary.get('inference_images_per_second', 0), 1)} images/s.</p>"
        )
        pairs = summary.get("most_confused") or []
        if pairs:
            out.append(
                "<h3>Most confused pairs</h3>"
                + _table(
                    ["true class", "predicted as", "images"],
                    [[p["true"], p["predicted"], p["count"]] for p in pairs],
                    left=2,
                )
            )
        if isinstance(summary.get("log_loss"), (int, float)):
            out.append(
                f"<p>Calibration on the test set: log-loss {summary['log_loss']:.4f}, expected calibration "
                f"error {summary.get('expected_calibration_error', 0.0):.4f}.</p>"
            )
        if summary.get("warnings"):
            out.append("<ul>" + "".join(f"<li>{escape(w)}</li>" for w in summary["warnings"]) + "</ul>")
    if meta.get("kind") != "texture" or (ev / "curves.png").is_file():  # one fit: no curves per epoch
        out.append('<div class="grid">' + _figure(ev / "curves.png", f"{name}: accuracy and loss per epoch") + "</div>")
    # Full width, one under the other: 14 classes need the room for readable cell numbers.
    out.append(_figure(ev / "confusion_matrix.png", f"{name}: confusion matrix (counts)", wide=True))
    out.append(_figure(ev / "confusion_matrix_normalized.png", f"{name}: confusion matrix (row-normalized)", wide=True))
    report = _read_json(ev / "classification_report.json")
    if report:
        out.append("<h3>Classification report</h3>" + _report_table(report))
    ref = _csv_table(ev / "per_class_reference_metrics.csv")
    if ref:
        out.append("<h3>Per class, one-vs-rest (reference formulas)</h3>" + ref)
    out.append("<h3>Most confident mistakes</h3>" + _img(ev / "mistakes.png", f"{name}: most confident mistakes"))
    if (ev / "gradcam_examples.png").is_file():
        out.append(
            "<h3>Where the model looks (Grad-CAM, one test image per class)</h3>"
            + _img(ev / "gradcam_examples.png", f"{name}: Grad-CAM examples")
        )
    return "\n".join(out)


def _recommended_banner(run_dir: Path) -> str:
    """Which classifier `predict`, `serve` and `virion.load` use, and why (chosen on validation data)."""
    try:
        chosen = store.read_recommended(run_dir)
    except VirionError as exc:
        return f'<p class="banner warn"><b>Recommended classifier:</b> unreadable ({escape(str(exc))})</p>'
    if not chosen:
        return ""
    weights = chosen.get("weights")
    members = ", ".join(
        f"{m} ({w:.2f})" if weights else m for m, w in zip(chosen.get("members") or [], weights or [None] * 99)
    )
    candidates = chosen.get("candidates") or {}
    rows = [
        [name, f"{c.get('macro_f1', 0):.4f}", f"{c.get('accuracy', 0):.4f}", f"{c.get('log_loss', 0):.4f}"]
        for name, c in candidates.items()
    ]
    notes = "".join(f"<li>{escape(str(n))}</li>" for n in chosen.get("notes") or [])
    return (
        f'<p class="banner ok" id="recommended"><b>Recommended classifier:</b> {escape(str(chosen["classifier"]))}'
        f" (members: {escape(members)}). Chosen on the validation split"
        + (" (probabilities with 8-way TTA)" if chosen.get("tta") else "")
        + ", never the test split: "
        f"{escape(str(chosen.get('why', '')))}. <code>virion predict</code>, <code>virion serve</code> and "
        "<code>virion.load(run).predict</code> use it by default.</p>"
        + (
            _table(["candidate", "validation macro F1", "validation accuracy", "validation log-loss"], rows)
            if rows
            else ""
        )
        + (f"<ul>{notes}</ul>" if notes else "")
    )


def _ensemble_section(folder: Path, data_name: str | None = None, variant: str | None = None) -> str:
    """An ensemble's test-set evaluation (no model of its own: its members' probabilities combined)."""
    ev = layout.evaluation_dir(folder, data_name, variant)
    summary = _read_json(ev / layout.SUMMARY_FILE) or {}
    name = folder.name
    out = [
        f'<h2 id="{escape(name)}">Ensemble: {escape(name)}</h2>',
        f"<p>{escape(str(summary.get('combination') or 'mean'))} of "
        f"{escape(', '.join(summary.get('members') or []))}{escape(_tta_words(summary))}. "
        f"Test set: {summary.get('n_images')} images, "
        f"accuracy <b>{summary.get('accuracy', 0):.4f}</b>, macro F1 <b>{summary.get('macro_f1', 0):.4f}</b>, "
        f"log-loss {summary.get('log_loss', 0):.4f}.</p>",
        *(
            [
                "<p>Its weights were fitted on validation probabilities "
                + ("with" if summary["weights_fitted_with_tta"] else "without")
                + " TTA (the run's own setting, recommended.json), unlike these test probabilities.</p>"
            ]
            if summary.get("weights_fitted_with_tta", summary.get("tta")) != summary.get("tta")
            else []
        ),
        _figure(ev / "confusion_matrix.png", f"{name}: confusion matrix (counts)", wide=True),
    ]
    report = _read_json(ev / "classification_report.json")
    if report:
        out.append("<h3>Classification report</h3>" + _report_table(report))
    return "\n".join(out)


def write_report(run_dir: Path, data_name: str | None = None, variant: str | None = None) -> Path:
    """Write `run_dir/report.html` from what training and evaluation left in the run folder.

    data_name: the report of an evaluation on other data (`report-<data>.html`, from
    `<model>/evaluation-<data>/`); the run's own report is left as it is. variant: the report of an
    evaluation with the other TTA setting (`layout.tta_variant`: `report[-<data>]-tta.html`).
    """
    run_dir = Path(run_dir)
    dirs = layout.model_dirs(run_dir)
    config = store.read_config(run_dir)
    models = [(d.name, store.read_metadata(d).to_dict()) for d in dirs]
    failed = {n: m.get("failure") or "no reason recorded" for n, m in models if m.get("status") == "failed"}
    evaluated = all(
        (layout.evaluation_dir(d, data_name, variant) / layout.SUMMARY_FILE).is_file()
        for d in dirs
        if d.name not in failed
    )
    rows = compare_runs([run_dir], data_name=data_name, variant=variant) if evaluated else []
    ensemble_names = [d.name for d in layout.ensemble_dirs(run_dir, data_name, variant)] if evaluated else []
    tta_views = {r["tta"] for r in rows if r.get("tta")}
    info = _dataset_info(run_dir)
    synthetic = bool(info.get("synthetic")) or (
        not data_name and bool(config.get("data")) and is_synthetic(str(config.get("data")))
    )

    tone, statement = _weights_statement(models)
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [
        f"<h1>virion report: {escape(run_dir.name)}"
        + (f" on {escape(data_name)}" if data_name else "")
        + escape(tta_title(rows))
        + "</h1>",
        f'<p class="meta">{escape(str(run_dir.resolve()))} · written {now}</p>',
        f'<p class="banner {tone}"><b>Weights:</b> {escape(statement)}</p>',
        *(
            [
                f'<p class="banner bad" id="failed"><b>Training failed</b> for {len(failed)} model(s): '
                + "; ".join(f"{escape(n)}: {escape(str(why))}" for n, why in failed.items())
                + "</p>"
            ]
            if failed
            else []
        ),
        *(
            [
                f'<p class="banner warn"><b>Evaluated on other data:</b> {escape(data_name)} (the training data '
                f"is described below; the run's own evaluation is in {layout.REPORT_FILE})</p>"
            ]
            if data_name
            else []
        ),
        *(
            [
                '<p class="banner warn" id="synthetic"><b>Synthetic data:</b> these models were trained and tested '
                "on virion's built-in SYNTHETIC TEM images, not real micrographs; the numbers say nothing about "
                "accuracy on real data.</p>"
            ]
            if synthetic and not data_name
            else []
        ),
        *(
            [
                '<p class="banner warn" id="tta"><b>Test-time augmentation:</b> the scores below are '
                + ("with" if variant == layout.TTA_VARIANT else "without")
                + " TTA, unlike the run's own setting (config.json eval_tta); the run's own evaluation is in "
                f"{escape(layout.report_file(run_dir, data_name).name)}</p>"
            ]
            if variant
            else [
                f'<p class="banner ok" id="tta"><b>Test-time augmentation:</b> every test score here is the mean '
                f"over each image's {escape(tta_views.pop())} flips and 90-degree turns (eval_tta).</p>"
            ]
            if len(tta_views) == 1 and tta_views != {"none"}
            else []
        ),
        *([_recommended_banner(run_dir)] if not data_name and not variant else []),
        "<p>Models: "
        + ", ".join(f'<a href="#{escape(n)}">{escape(n)}</a>' for n in [n for n, _ in models] + ensemble_names)
        + "</p>",
        "<h2>Comparison</h2>",
    ]
    if rows:
        cells = [[format_cell(k, r.get(k)) for k, _ in COLUMNS] for r in rows]
        parts.append(_table([t for _, t in COLUMNS], cells, left=2))
        parts.append(
            _img(
                run_dir / f"{layout.comparison_stem(data_name, variant)}.png",
                "model comparison: " + ", ".join([n for n, _ in models] + ensemble_names),
            )
        )
    else:
        parts.append(
            f'<p class="banner warn">Not every model is evaluated yet: run '
            f"<code>{escape(evaluate_hint(run_dir, data_name, variant))}</code>.</p>"
        )
    parts.append(_dataset_section(run_dir, config))
    parts.append(_settings_section(config))
    parts.extend(_model_section(d, meta, data_name, variant) for d, (_, meta) in zip(dirs, models))
    parts.extend(_ensemble_section(run_dir / n, data_name, variant) for n in ensemble_names)
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>virion report: {escape(run_dir.name)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
    crash_point("report")  # fault-injection tests: a kill before the report is written
    return atomic_write_text(layout.report_file(run_dir, data_name, variant), page)
