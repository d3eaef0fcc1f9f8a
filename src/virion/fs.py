"""File-system checks and messages: refuse an unusable output path before any slow work.

`check_output_dir` / `check_output_file` run before decoding or model building, so `--out` under
a file, in a read-only or unwritable folder fails in a second with one line, not after an hour.
Permission bits alone do not decide it (root ignores them; read-only mounts and immutable
folders do not show in them), so a probe file is created and removed in the folder that would
hold the output. `describe_os_error` turns any OSError that still happens (full disk, file-size
limit, also h5py's wrapped errors) into the same one-line form.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

from virion.errors import VirionError

_FIXES = {
    errno.EACCES: "check the folder's permissions or choose another place",
    errno.EPERM: "the folder or file may be immutable or protected; choose another place",
    errno.EROFS: "the file system is read-only; choose a place on a writable disk",
    errno.ENOSPC: "the disk is full; free some space or choose another disk",
    errno.EDQUOT: "the disk quota is used up; free some space or choose another disk",
    errno.EFBIG: "the file-size limit was reached (see `ulimit -f`); raise it or write elsewhere",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "a folder is in the way where a file is expected; give a file name",
    errno.EEXIST: "it already exists; remove it or choose another name",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "use a shorter path",
}


def _existing_ancestor(path: Path) -> Path:
    """The nearest part of `path` that exists; raise when that part is a file, not a folder."""
    probe = path
    while not os.path.lexists(probe):
        if probe.parent == probe:
            break
        probe = probe.parent
    return probe


def _probe_writable(folder: Path, option: str, shown: Path) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise VirionError(
            f"{option} {shown}: cannot write in {folder} (permission denied); choose a folder you can write to"
        )
    try:
        fd, name = tempfile.mkstemp(prefix=".virion-write-test-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise VirionError(
            f"{option} {shown}: cannot write in {folder} ({reason}); {_FIXES.get(exc.errno, 'choose another place')}"
        ) from None


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> None:
    """Raise VirionError unless `path` is (or can be created as) a folder we can write in."""
    out = Path(path).expanduser()
    existing = _existing_ancestor(out)
    if existing.exists() and not existing.is_dir():
        what = "is a file" if existing == out else f"is under {existing}, which is a file"
        raise VirionError(f"{option} {path}: {what}, not a folder; choose another {option}")
    if not existing.exists():  # a dangling link
        raise VirionError(f"{option} {path}: {existing} is a broken link; choose another {option}")
    _probe_writable(existing, option, Path(path))


def check_output_file(path: str | os.PathLike, option: str = "--out") -> None:
    """Raise VirionError unless a file can be written at `path` (its folder exists or can be made)."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise VirionError(f"{option} {path}: is a folder; give a file name")
    check_output_dir(out.parent if str(out.parent) else Path("."), option)


def describe_os_error(exc: OSError, context: str | None = None) -> str:
    """One line for an OSError: `<path>: <cause>; <fix>` (h5py hides errno in its message).

    `context` (e.g. "--out runs/a") stands in for the path when the error does not name one.
    """
    code = exc.errno
    text = str(exc)
    if code is None:
        found = re.search(r"errno = (\d+)", text)
        code = int(found.group(1)) if found else None
    if code:
        cause = os.strerror(code)
    else:
        cause = exc.strerror or (text.splitlines()[0] if text else type(exc).__name__)
    where = exc.filename if exc.filename is not None else _filename_in(text)
    fix = _FIXES.get(code, "check the path and the disk")
    prefix = f"{where}: " if where else (f"while writing {context}: " if context else "")
    return f"{prefix}{cause}; {fix}".replace("\n", " ")


def _filename_in(text: str) -> str | None:
    found = re.search(r"(?:file)?name = '([^']+)'", text)  # h5py: "Unable to create file (... name = 'x.h5', ...)"
    return found.group(1) if found else None


def start_output_dir(out: Path, overwrite: bool, marker: str, command: str) -> Path:
    """A fresh temporary folder beside `out` for a command that publishes a whole folder at once
    (`publish_output_dir`), so an interrupted run never leaves half an output where `out` should be.

    `out` must be new or empty; with `overwrite`, it may hold an earlier output of the same command
    (recognised by its `marker` file), never anything else.
    """
    check_output_dir(out, "--out")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise VirionError(f"--out {out}: already exists and is not empty; choose a new folder or add --overwrite")
        if not (out / marker).is_file():
            raise VirionError(
                f"--out {out}: is not a `{command}` output (no {marker}); --overwrite replaces only those; "
                f"choose another --out"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def publish_output_dir(tmp: Path, out: Path) -> None:
    """Rename the finished folder into place; an earlier output is removed only after that."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
