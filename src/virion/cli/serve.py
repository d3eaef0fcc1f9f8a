"""`virion serve`: a local web page to classify images with a trained run and see Grad-CAM."""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path

from virion.cli import argtypes
from virion.errors import VirionError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="a local web page: upload images, see the top classes and Grad-CAM",
        description="Serve a web page on this machine for a trained run (or one model folder/file): upload "
        "images (PNG, JPEG, 8/16-bit TIFF), see each as the model sees it, the top classes with probabilities, "
        "a Grad-CAM map for any class, a model card, and download the results as CSV (the columns of "
        '`virion predict --out`). Works offline. Needs the extra: pip install "virion[app]".',
    )
    parser.add_argument("run", metavar="RUN", help="a run folder from `virion train` (or a model folder / .keras file)")
    parser.add_argument(
        "--model",
        dest="models",
        metavar="NAME",
        action="append",
        default=None,
        help="serve only this model of the run (repeat for several); default: every model",
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default: {DEFAULT_HOST}, this machine only); another address "
        "lets other machines use the page, with no login",
    )
    parser.add_argument("--port", type=argtypes.port, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    parser.add_argument(
        "--top-k",
        type=argtypes.positive_int,
        default=5,
        metavar="K",
        help="how many classes each result's bar chart shows (default: 5)",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=argtypes.positive_int,
        default=512,
        metavar="MB",
        help="largest upload accepted in one request (default: 512)",
    )
    parser.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port_free(host: str, port: int) -> None:
    """Refuse a busy port before loading models (uvicorn would only say so after the slow part)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise VirionError(
            f"--host {host}: not an address of this machine ({exc.strerror}); use {DEFAULT_HOST} or 0.0.0.0"
        ) from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise VirionError(
                f"--port {port}: cannot listen on {host}:{port} ({exc.strerror}); choose another --port"
            ) from None


def run(args) -> int:
    from virion.app import load_classifier, require_app_extra

    require_app_extra()
    source = Path(args.run)
    if not source.exists():
        raise VirionError(f"{source}: no such run folder; pass a folder written by `virion train` (runs/NAME)")
    if not is_loopback(args.host):
        print(
            f"virion: warning: --host {args.host}: the page will be reachable from other machines, with no "
            "login and no encryption; anyone who can reach it can upload images and use the models",
            file=sys.stderr,
        )
    check_port_free(args.host, args.port)

    import uvicorn

    from virion.app.server import create_app

    classifier = load_classifier(source, models=args.models)
    app = create_app(classifier, source, top_k=args.top_k, max_upload_mb=args.max_upload_mb)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    names = ", ".join(classifier.model_names)
    print(f"virion serve: {names} from {source}; default: {classifier.default_model} ({classifier.why})", flush=True)
    print(f"open http://{shown}:{args.port}/ in a browser (Ctrl+C stops the server)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
