"""The local web page behind `virion serve`: a small Starlette app, one HTML page, vanilla JS.

Every prediction goes through `virion.inference.Classifier`, the same path as `virion predict`,
so the page, the CLI and a notebook agree to the last digit. The models are loaded once, before
the app is built; requests share them under one lock (TensorFlow calls from several threads at
once gain nothing on a desktop and make Grad-CAM's gradient tapes harder to reason about).

Uploads are written to a private temporary folder for the length of one request, under their
own file names (so a TIFF is decoded by the same code as a file on disk), and deleted after.
A file that cannot be decoded comes back as a message for that file; the server keeps serving.
"""

from __future__ import annotations

import base64
import csv
import io
import re
import sys
import tempfile
import threading
import traceback
from pathlib import Path

import numpy as np
from PIL import Image

from virion.app.card import build_card
from virion.errors import VirionError
from virion.micrograph.detector_files import choose_detector
from virion.micrograph.sizes import find_class_sizes

ENSEMBLE = "ensemble"
DEFAULT_TOP_K = 5
DEFAULT_MAX_UPLOAD_MB = 512
CSV_TOP_K = 3  # the default of `virion predict --top-k`, so the CSVs line up
EXPLAIN_MIN_SIZE = 256  # Grad-CAM is drawn over a decode at least this large: small inputs look blocky
MAX_FILES = 1000
COLOURMAP = "jet"  # the colour map of virion's Grad-CAM overlay (virion.evaluation.gradcam.overlay)


def low_confidence_threshold(num_classes: int) -> float:
    """Halfway from chance (1/C) to certainty: a top class below this earns a warning.

    For 2 classes 0.75, for 3 classes 0.67, for 14 classes 0.54: the bar rises with how easy it
    is to be right by luck, and no model that is merely better than a coin toss passes it.
    """
    chance = 1.0 / max(int(num_classes), 1)
    return chance + 0.5 * (1.0 - chance)


def png_data_url(array: np.ndarray) -> str:
    """A uint8 (H, W) or (H, W, 3) array as a PNG data URL: browsers cannot show TIFF, PNG they can."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def colour_stops(count: int = 11) -> list[str]:
    """The Grad-CAM colour map as CSS colours from 0 to 1, for the colour scale beside the overlay."""
    from matplotlib import colormaps

    cmap = colormaps[COLOURMAP]
    return ["#" + "".join(f"{round(255 * c):02x}" for c in cmap(i / (count - 1))[:3]) for i in range(count)]


def safe_file_name(name: str | None, index: int) -> str:
    """The upload's base name with anything odd replaced, never empty, never a path."""
    base = Path(str(name or "")).name.strip()
    base = re.sub(r"[^A-Za-z0-9._ -]", "_", base)[:120].strip(" .")
    return base or f"upload-{index + 1}"


class ServeState:
    """The loaded classifier plus what the page needs about it, built once at start-up."""

    def __init__(self, classifier, source: Path, *, top_k: int = DEFAULT_TOP_K):
        self.classifier = classifier
        self.source = Path(source)
        self.card = build_card(self.source, classifier)
        self.lock = threading.Lock()
        self.class_names = list(classifier.class_names)
        self.top_k = max(1, min(int(top_k), len(self.class_names)))
        self.model_names = list(classifier.model_names)
        self.choices = list(classifier.choices)  # the models, then "ensemble" (and "ensemble-weighted")
        self.default_model = classifier.default_model  # the run's recommended classifier
        self.combinations = classifier.combinations()
        self.networks = [n for n in self.model_names if classifier.get(n).is_network]
        self.class_sizes = find_class_sizes(self.source)  # the scan's size prior (None: a model file, old run)
        self.detector, self.detector_text = choose_detector(None, self.source)  # the run's, else LoG

    def gradcam_model(self, model: str) -> str | None:
        """The network whose Grad-CAM the page shows for `model` (an ensemble: its first network), or None."""
        members = self.combinations[model][0] if model in self.combinations else [model]
        return next((m for m in members if m in self.networks), None)

    def info(self) -> dict:
        return {
            "card": self.card.to_dict(),
            "models": self.choices,
            "default_model": self.default_model,
            "recommended": {"classifier": self.default_model, "why": self.classifier.why},
            "gradcam": {name: self.gradcam_model(name) is not None for name in self.choices},
            "class_names": self.class_names,
            "top_k": self.top_k,
            "chance": 1.0 / len(self.class_names),
            "low_confidence_below": low_confidence_threshold(len(self.class_names)),
            "colour_stops": colour_stops(),
            "colour_map": COLOURMAP,
        }

    def input_size(self, model: str) -> int:
        meta = self.classifier.metadata.get(model)
        size = getattr(meta, "input_size", None)
        return int(size) if isinstance(size, int) else int(self.classifier.input_size)

    def check_model(self, model: str | None) -> str:
        model = (model or self.default_model).strip()
        if model not in self.choices:
            raise VirionError(f"model {model!r} is not served; choose one of: {', '.join(self.choices)}")
        return model

    # --- the two things the page asks for -------------------------------------------------

    def predict(self, uploads: list[tuple[str, bytes]], model: str | None, tta: bool) -> dict:
        """Classify uploads [(name, bytes)]: one result per upload in order, plus the CSV text."""
        model = self.check_model(model)
        if not uploads:
            raise VirionError("no file received; choose one or more image files")
        names = [safe_file_name(name, i) for i, (name, _) in enumerate(uploads)]
        # an ensemble's image is shown as its first member sees it
        single = self.combinations[model][0][0] if model in self.combinations else model
        results: list[dict] = [{"name": name} for name in names]
        with tempfile.TemporaryDirectory(prefix="virion-serve-") as tmp:
            paths: list[Path | None] = []
            for i, (name, data) in enumerate(uploads):
                if not data:
                    results[i].update(ok=False, error=f"{name}: empty file (0 bytes); choose the image again")
                    paths.append(None)
                    continue
                path = Path(tmp) / f"{i:04d}" / name
                path.parent.mkdir()
                path.write_bytes(data)
                paths.append(path)
            readable = [p for p in paths if p is not None]
            index_of = {}
            for i, p in enumerate(paths):
                if p is not None:
                    index_of[str(p)] = index_of[str(p.resolve())] = i
            rows: list[tuple[int, dict]] = []
            if readable:
                with self.lock:
                    predictions = self.classifier.predict(readable, model=model, tta=tta)
                    for source, reason in predictions.failures:
                        i = index_of.get(str(source), index_of.get(str(Path(source).resolve())))
                        if i is not None:
                            results[i].update(ok=False, error=f"{names[i]}: {_plain_reason(reason, paths[i])}")
                    probabilities = np.asarray(predictions.probabilities, dtype=np.float64)
                    threshold = low_confidence_threshold(len(self.class_names))
                    for source, probs in zip(predictions.sources, probabilities):
                        i = index_of[str(source)] if str(source) in index_of else index_of[str(Path(source).resolve())]
                        order = np.argsort(-probs, kind="stable")[: self.top_k]
                        top = [
                            {"class": self.class_names[j], "index": int(j), "probability": float(probs[j])}
                            for j in order
                        ]
                        seen = self.classifier.decode([paths[i]], model=single)[0]
                        results[i].update(
                            ok=True,
                            model=model,
                            predicted=top[0]["class"],
                            confidence=top[0]["probability"],
                            top=top,
                            probabilities=[float(p) for p in probs],
                            low_confidence=bool(top[0]["probability"] < threshold),
                            input_png=png_data_url(seen),
                            input_shape=list(seen.shape[:2]),
                        )
                    for row in predictions.to_rows(CSV_TOP_K):
                        i = index_of.get(str(row.get("file")), index_of.get(str(Path(str(row.get("file"))).resolve())))
                        if i is not None:
                            rows.append((i, {**row, "file": names[i]}))
        for i, result in enumerate(results):
            if "ok" not in result:  # neither a prediction nor a reason came back: say so, never drop it
                result.update(ok=False, error=f"{names[i]}: could not be classified")
        return {"model": model, "tta": bool(tta), "results": results, "csv": _csv_text(rows, results)}

    def explain(self, name: str, data: bytes, model: str | None, class_index: int | None) -> dict:
        """Grad-CAM of one upload for `class_index` (default: the top class) with one model."""
        model = self.check_model(model)
        explained_by = self.gradcam_model(model)
        if explained_by is None:
            raise VirionError(
                f"Grad-CAM is not available for {model}: it is not a network (choose a network to see where it looks)"
            )
        name = safe_file_name(name, 0)
        if not data:
            raise VirionError(f"{name}: empty file (0 bytes); choose the image again")
        if class_index is not None and not 0 <= class_index < len(self.class_names):
            raise VirionError(f"class index {class_index}: choose 0 to {len(self.class_names) - 1}")
        with tempfile.TemporaryDirectory(prefix="virion-serve-") as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            with self.lock:
                try:
                    size = max(self.input_size(explained_by), EXPLAIN_MIN_SIZE)
                    explanation = self.classifier.explain(path, class_index=class_index, model=explained_by, size=size)
                except VirionError as exc:
                    raise VirionError(f"{name}: {_plain_reason(str(exc), path)}") from None
                except (OSError, ValueError) as exc:
                    raise VirionError(f"{name}: {_plain_reason(str(exc), path)}") from None
        return {
            "name": name,
            "model": explained_by,
            "class_index": int(explanation.class_index),
            "class_name": explanation.class_name,
            "confidence": float(explanation.confidence),
            "overlay_png": png_data_url(np.asarray(explanation.overlay, dtype=np.uint8)),
            "shape": list(np.asarray(explanation.overlay).shape[:2]),
            "note": (
                f"Grad-CAM needs one network; the ensemble's first network ({explained_by}) is shown"
                if model in self.combinations
                else None
            ),
        }


def _plain_reason(reason: str, path: Path | None) -> str:
    """The decoder's reason without our temporary folder in it (the user never saw that path)."""
    text = str(reason).replace("\n", " ").strip()
    if path is not None:
        for form in {str(path), str(path.resolve())}:
            text = text.replace(form + ": ", "").replace(form, path.name)
    return text or "could not be read as an image"


def _csv_text(rows: list[tuple[int, dict]], results: list[dict]) -> str:
    """The CSV of `virion predict --out` (same columns) for this batch, rows in upload order."""
    header = list(rows[0][1]) if rows else None
    by_index: dict[int, list[dict]] = {}
    for i, row in rows:
        by_index.setdefault(i, []).append(row)
    if header is None:
        from virion.inference.classifier import csv_columns

        header = csv_columns(CSV_TOP_K)
    out: list[dict] = []
    for i, result in enumerate(results):
        if i in by_index:
            out.extend(by_index[i])
        else:
            out.append({**{key: "" for key in header}, "file": result["name"], "error": result.get("error", "")})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=header, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(out)
    return text.getvalue()


def create_app(
    classifier, source: str | Path, *, top_k: int = DEFAULT_TOP_K, max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB
):
    """The Starlette app serving `classifier` (already loaded) for the run at `source`."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import FileResponse, JSONResponse, PlainTextResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    state = ServeState(classifier, Path(source), top_k=top_k)
    static_dir = Path(__file__).with_name("static")
    max_bytes = int(max_upload_mb) * 1024 * 1024

    def error(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def read_form(request):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise VirionError(
                f"upload of {int(length) / 2**20:.0f} MB is over the limit of {max_upload_mb} MB; "
                "send fewer files at once or restart with a larger --max-upload-mb"
            )
        try:
            return await request.form(max_files=MAX_FILES, max_fields=100)
        except Exception as exc:  # noqa: BLE001 - the multipart parser's errors (too many files, bad body)
            raise VirionError(f"could not read the upload ({exc})") from None

    async def guarded(work):
        try:
            return JSONResponse(await work())
        except VirionError as exc:
            return error(str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must not take the page down: log it, tell the page
            traceback.print_exc(file=sys.stderr)
            return error(f"internal error ({type(exc).__name__}: {exc}); the server is still running", 500)

    async def index(request):
        return FileResponse(static_dir / "index.html", headers={"Cache-Control": "no-store"})

    async def info(request):
        return JSONResponse(state.info())

    async def predict(request):
        async def work():
            form = await read_form(request)
            uploads = []
            for item in form.getlist("files"):
                if hasattr(item, "read"):
                    uploads.append((item.filename, await item.read()))
            tta = str(form.get("tta", "")).lower() in ("1", "true", "on", "yes")
            return await run_in_threadpool(state.predict, uploads, form.get("model"), tta)

        return await guarded(work)

    async def explain(request):
        async def work():
            form = await read_form(request)
            item = form.get("file")
            if not hasattr(item, "read"):
                raise VirionError("no file received; choose an image file")
            text = str(form.get("class_index") or "").strip()
            try:
                class_index = int(text) if text else None
            except ValueError:
                raise VirionError(f"class_index {text!r}: expected a class number") from None
            data = await item.read()
            return await run_in_threadpool(state.explain, item.filename, data, form.get("model"), class_index)

        return await guarded(work)

    async def scan(request):
        async def work():
            from virion.app.scan_api import scan_upload

            form = await read_form(request)
            item = form.get("file")
            if not hasattr(item, "read"):
                raise VirionError("no file received; choose a micrograph file")
            data = await item.read()
            options = {k: form.get(k) for k in ("nm_per_px", "min_confidence", "model")}
            return await run_in_threadpool(scan_upload, state, item.filename, data, **options)

        return await guarded(work)

    async def health(request):
        return PlainTextResponse("ok")

    routes = [
        Route("/", index),
        Route("/api/info", info),
        Route("/api/predict", predict, methods=["POST"]),
        Route("/api/explain", explain, methods=["POST"]),
        Route("/api/scan", scan, methods=["POST"]),  # micrograph mode: virion.app.scan_api
        Route("/healthz", health),
        Mount("/static", app=StaticFiles(directory=static_dir), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.serve = state
    return app
