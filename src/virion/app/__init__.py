"""`virion serve`: a local web page to classify TEM images and see Grad-CAM, for one person's machine.

A small Starlette app (one HTML page, plain JS and CSS shipped in `static/`, nothing from a CDN)
over `virion.inference.Classifier`. Needs the optional extra: `pip install "virion[app]"`.
"""

from __future__ import annotations

from virion.errors import VirionError

EXTRA_HINT = 'pip install "virion[app]"'


def require_app_extra() -> None:
    """Fail with one line naming the extra when the web libraries are missing."""
    missing = []
    for module, package in (
        ("starlette", "starlette"),
        ("uvicorn", "uvicorn"),
        ("python_multipart", "python-multipart"),
    ):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise VirionError(f"virion serve needs {', '.join(missing)}: install the web extra with {EXTRA_HINT}")


def load_classifier(path, models=None):
    """The one prediction path (virion.inference.Classifier), loaded once."""
    from virion.inference import Classifier

    return Classifier.load(path, models=models)
