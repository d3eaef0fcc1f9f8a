"""What `virion predict` shows and writes: a plain-text table and the CSV, from `Predictions`."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from virion.atomic import atomic_write_text
from virion.inference.classifier import Predictions, csv_columns, rows_for


def write_csv(predictions: list[Predictions], path: str | Path, top_k: int = 3) -> Path:
    """One row per input and model, in input order; unreadable inputs get one row with the reason."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=csv_columns(top_k))
    writer.writeheader()
    writer.writerows(rows_for(predictions, top_k))
    return atomic_write_text(path, text.getvalue())


def unreadable(predictions: list[Predictions]) -> list[tuple[str, str]]:
    """Each unreadable input once, with the first reason given, in input order."""
    reasons: dict[str, str] = {}
    for p in predictions:
        for source, reason in p.failures:
            reasons.setdefault(source, reason)
    order = predictions[0].order if predictions else []
    return [(s, reasons[s]) for s in order if s in reasons] + [(s, r) for s, r in reasons.items() if s not in order]


def format_table(predictions: list[Predictions]) -> str:
    """A plain-text table (file, [model,] class, probability) followed by the unreadable inputs."""
    rows = [r for r in rows_for(predictions, 1) if not r["error"]]
    show_model = len({p.model for p in predictions}) > 1
    header = ["file"] + (["model"] if show_model else []) + ["class", "probability"]
    lines = [
        [r["file"]] + ([r["model"]] if show_model else []) + [r["class"], f"{float(r['probability']):.3f}"]
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in lines]
    bad = unreadable(predictions)
    if bad:
        out.append(f"{len(bad)} unreadable file(s), skipped:")
        out += [f"  {f}: {reason}" for f, reason in bad]
    return "\n".join(line.rstrip() for line in out)
