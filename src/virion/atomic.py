"""Atomic file writes: a crash or Ctrl-C never leaves half a file where a good one was.

Every writer gets a free temporary name in the target's folder (so the final rename stays on one
file system) that ends like the target, because Keras picks the format from the suffix
(`.keras`, `.h5`, `.weights.h5`); the file is renamed into place only once it is complete.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

TMP_MARK = ".tmp"  # every temporary name holds this, so stale ones can be found and removed


def file_mode() -> int:
    """The mode a plainly created file gets under the current umask (mkstemp makes 0600 files)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _suffix(path: Path) -> str:
    return ".weights.h5" if path.name.endswith(".weights.h5") else path.suffix


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call `write(tmp)` with a temporary path beside `path`, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_MARK + _suffix(path), dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # a free name: some writers (Keras) refuse to overwrite without asking
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) atomically, flushed to disk before the rename."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_write(path, write)
