"""Decode each split once into an on-disk uint8 array and reuse it for every model and later run.

Decoding and resizing TIFFs every epoch is the slow path of the reference pipeline. Here a split
is decoded once (in parallel, with a progress bar) into ``<cache>/<key>.npy`` plus a JSON sidecar.
The key hashes the resolved file paths, their sizes and modification times, the decode settings
and a format version, so any changed file or setting gives a new entry. Both files are written to
temp names and renamed into place (sidecar last, it marks the entry complete), so an interrupted
build never leaves a cache that looks valid.

Files that cannot be decoded are skipped and reported with ``warnings.warn`` (category
`SkippedFilesWarning`), and returned in `SplitArrays.failures`; ``strict=True`` makes them an error.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from virion.atomic import TMP_MARK, atomic_write_text
from virion.data import decode as _decode
from virion.data.decode import DecodeError, DecodeSettings
from virion.data.layout import Split
from virion.errors import VirionError

FORMAT_VERSION = 1
# Below this many files a process pool costs more (start-up, imports) than it saves.
PARALLEL_MIN_FILES = 64
_STALE_TMP_SECONDS = 6 * 3600


class SkippedFilesWarning(UserWarning):
    """Some images could not be decoded and were left out."""


@dataclass
class SplitArrays:
    """Decoded images of one split; `failures` lists the files that were skipped and why."""

    images: np.ndarray
    labels: np.ndarray
    files: list[Path]
    failures: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)


def default_cache_dir() -> Path:
    """$VIRION_CACHE_DIR, else ~/.cache/virion."""
    env = os.environ.get("VIRION_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "virion"


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cache_key(files: list[Path], settings: DecodeSettings) -> str:
    """Hash of what decides the cached pixels: resolved paths, sizes, mtimes, settings, format."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT_VERSION, "settings": settings.to_json()}, sort_keys=True).encode())
    for f in files:
        try:
            st = os.stat(f)
            stamp = f"{st.st_size}\t{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"\n{Path(f).resolve()}\t{stamp}".encode())
    return h.hexdigest()[:40]


def load_split_arrays(split: Split, settings: DecodeSettings, *, cache_dir: Path | None = None,
                      workers: int | None = None, strict: bool = False, progress: bool = True) -> SplitArrays:
    """Decoded images of `split` at `settings.size`, from the cache or decoded (once) into it.

    The returned `images` is a read-only memory map of the cache file when the split is not empty.
    """
    files = [Path(f) for f in split.files]
    labels = np.asarray(split.labels, dtype=np.int64)
    size = int(settings.size)
    if not files:
        return SplitArrays(np.zeros((0, size, size), np.uint8), labels[:0], [], [])
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VirionError(f"{root}: cannot create the decode cache folder ({exc.strerror}); "
                          f"set VIRION_CACHE_DIR or --cache-dir to a writable folder") from None
    key = cache_key(files, settings)
    npy, meta_path = root / f"{key}.npy", root / f"{key}.json"

    meta = _read_meta(meta_path, key)
    if meta is None:
        _remove_stale_tmp(root)
        meta = _build(files, settings, npy, meta_path, key, split.name, workers, progress)
    images = _open_images(npy, meta, size)
    if images is None:  # sidecar present but array damaged (e.g. edited by hand): rebuild
        meta = _build(files, settings, npy, meta_path, key, split.name, workers, progress)
        images = _open_images(npy, meta, size)

    failed = {int(i): reason for i, reason in meta["failures"]}
    kept = [i for i in range(len(files)) if i not in failed]
    failures = [(files[i], failed[i]) for i in sorted(failed)]
    if failures:
        first = ", ".join(f"{f.name} ({r})" for f, r in failures[:3])
        if strict:
            raise VirionError(f"{failures[0][0]}: {failures[0][1]}; {len(failures)} of {len(files)} {split.name} "
                              f"image(s) cannot be decoded: fix or remove them, or run without --strict to skip them")
        warnings.warn(f"skipped {len(failures)} of {len(files)} {split.name} image(s) that could not be decoded: "
                      f"{first}{', ...' if len(failures) > 3 else ''}", SkippedFilesWarning, stacklevel=2)
    return SplitArrays(images, labels[kept], [files[i] for i in kept], failures)


def write_failures(failures, path) -> Path:
    """Write skipped files as ``file<TAB>reason`` lines (the run folder's skipped_files.txt)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for f, reason in failures:
        clean = " ".join(str(reason).split())  # one line, no tabs
        lines.append(f"{f}\t{clean}\n")
    atomic_write_text(path, "".join(lines))
    return path


# --------------------------------------------------------------------------------------------


def _read_meta(meta_path: Path, key: str) -> dict | None:
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key or meta.get("format") != FORMAT_VERSION:
        return None
    return meta


def _open_images(npy: Path, meta: dict, size: int) -> np.ndarray | None:
    expected = (int(meta["count"]), size, size)
    try:
        if expected[0] == 0:
            images = np.load(npy)
        else:
            images = np.load(npy, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if images.shape != expected or images.dtype != np.uint8:
        return None
    return images


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _remove_stale_tmp(root: Path) -> None:
    """Temp files left by a killed build (a crash cannot run its own clean-up)."""
    now = time.time()
    for tmp in root.glob(f".*{TMP_MARK}*"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                tmp.unlink()
        except OSError:
            pass


def _decode_chunk(indices: list[int], paths: list[str], settings: DecodeSettings):
    """Worker: decode some files; return their images and (index, reason) for the failures."""
    out = np.zeros((len(indices), settings.size, settings.size), np.uint8)
    ok, failures = [], []
    for row, (i, p) in enumerate(zip(indices, paths)):
        try:
            out[row] = _decode.decode_image(p, settings)
            ok.append(i)
        except DecodeError as exc:
            failures.append((i, exc.reason))
        except Exception as exc:  # a decoder bug must not take the whole build down
            failures.append((i, f"unexpected {type(exc).__name__}: {exc}"))
    return indices, out, ok, failures


def _chunks(n: int, workers: int) -> list[list[int]]:
    step = max(8, min(256, n // (workers * 8) or 1))
    return [list(range(s, min(s + step, n))) for s in range(0, n, step)]


def _build(files: list[Path], settings: DecodeSettings, npy: Path, meta_path: Path, key: str, split_name: str,
           workers: int | None, progress: bool) -> dict:
    """Decode all files into a temp .npy, compact out failures, rename into place, then the sidecar."""
    from tqdm import tqdm

    n, size = len(files), int(settings.size)
    workers = _cpu_count() if workers is None else max(1, int(workers))
    tmp = npy.parent / f".{npy.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    tmp2 = tmp.with_name(tmp.name.replace(".tmp", ".compact.tmp"))
    failures: dict[int, str] = {}
    started = time.perf_counter()
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size))
        bar = tqdm(total=n, desc=f"Decoding {split_name}", unit="img", file=sys.stderr, disable=not progress,
                   leave=False, dynamic_ncols=True)
        with bar:
            chunks = _chunks(n, workers)
            done: set[int] = set()

            def store(result) -> None:
                indices, out, _, failed = result
                arr[indices] = out
                failures.update(failed)
                bar.update(len(indices))

            if workers > 1 and n >= PARALLEL_MIN_FILES:
                _decode_parallel(files, chunks, settings, workers, store, done)
            for ci, chunk in enumerate(chunks):  # serial path, or what a broken pool left undone
                if ci not in done:
                    store(_decode_chunk(chunk, [str(files[i]) for i in chunk], settings))
        kept = [i for i in range(n) if i not in failures]
        if failures and kept:
            compact = np.lib.format.open_memmap(tmp2, mode="w+", dtype=np.uint8, shape=(len(kept), size, size))
            for s in range(0, len(kept), 1024):
                compact[s:s + 1024] = arr[kept[s:s + 1024]]
            compact.flush()
            del compact, arr
            os.replace(tmp2, tmp)
        elif not kept:
            del arr
            with open(tmp, "wb") as fh:
                np.save(fh, np.zeros((0, size, size), np.uint8))
        else:
            arr.flush()
            del arr
        os.replace(tmp, npy)
        meta = {
            "format": FORMAT_VERSION,
            "key": key,
            "split": split_name,
            "settings": settings.to_json(),
            "files": n,
            "count": len(kept),
            "failures": [[i, failures[i]] for i in sorted(failures)],
            "first_file": str(files[0]),
            "decode_seconds": round(time.perf_counter() - started, 3),
            "workers": workers,
        }
        atomic_write_text(meta_path, json.dumps(meta, indent=1))
        return meta
    finally:
        _unlink(tmp)
        _unlink(tmp2)


def _mp_context():
    """fork is fast but unsafe once a threaded runtime (TensorFlow, JAX, PyTorch) is loaded; then spawn."""
    threaded = any(name in sys.modules for name in ("tensorflow", "jax", "torch"))
    if sys.platform == "linux" and not threaded and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _decode_parallel(files, chunks, settings, workers, store, done: set[int]) -> None:
    """Decode chunks in worker processes; if the pool cannot run, leave the rest to the caller."""
    try:
        pool = ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=_mp_context())
    except (OSError, ValueError, NotImplementedError) as exc:  # e.g. no /dev/shm in a sandbox
        warnings.warn(f"parallel decoding unavailable ({exc}); decoding in this process", RuntimeWarning,
                      stacklevel=3)
        return
    try:
        futures = {pool.submit(_decode_chunk, c, [str(files[i]) for i in c], settings): ci
                   for ci, c in enumerate(chunks)}
        for future in as_completed(futures):
            store(future.result())
            done.add(futures[future])
    except (BrokenProcessPool, OSError) as exc:
        warnings.warn(f"parallel decoding failed ({type(exc).__name__}: {exc}); decoding the remaining "
                      f"files in this process", RuntimeWarning, stacklevel=3)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
