"""Decode each split once into an on-disk uint8 array and reuse it for every model and later run.

Decoding and resizing TIFFs every epoch is the slow path of the reference pipeline. Here a split
is decoded once (in parallel, with a progress bar) into ``<cache>/<key>.npy`` plus a JSON sidecar.
The key hashes the resolved file paths, their sizes and modification times, the decode settings
and a format version, so any changed file or setting gives a new entry. Both files are written to
temp names and renamed into place (sidecar last, it marks the entry complete), so an interrupted
build never leaves a cache that looks valid.

Files that cannot be decoded are skipped and reported with ``warnings.warn`` (category
`SkippedFilesWarning`), and returned in `SplitArrays.failures`; ``strict=True`` makes them an error.

Housekeeping: each use of an entry touches its sidecar, so the sidecar's time is the entry's last
use. After a new entry is written, least-recently-used entries are removed while the folder is
above a size cap ($VIRION_CACHE_MAX_GB, default 20; 0 turns the cap off) and entries unused for
longer than $VIRION_CACHE_MAX_AGE_DAYS (off unless set) are removed too. Entries opened or built
by the current process, entries used in the last hour (another run may be reading them) and
entries still being written are never removed. `cache_info` and `clear_cache` back
``virion cache info|clear``.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import re
import sys
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime, timezone
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

DEFAULT_MAX_GB = 20.0
MAX_GB_ENV = "VIRION_CACHE_MAX_GB"
MAX_AGE_ENV = "VIRION_CACHE_MAX_AGE_DAYS"
# An entry used this recently may be open in another run: pruning leaves it alone.
_RECENT_USE_SECONDS = 3600
_ENTRY_NAME = re.compile(r"^([0-9a-f]{40})\.(npy|json)$")
# Keys opened or built by this process: never pruned or cleared under a running job.
_IN_USE: set[str] = set()


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


def load_split_arrays(
    split: Split,
    settings: DecodeSettings,
    *,
    cache_dir: Path | None = None,
    workers: int | None = None,
    strict: bool = False,
    progress: bool = True,
) -> SplitArrays:
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
        raise VirionError(
            f"{root}: cannot create the decode cache folder ({exc.strerror or exc}); "
            f"set the environment variable VIRION_CACHE_DIR to a writable folder"
        ) from None
    key = cache_key(files, settings)
    npy, meta_path = root / f"{key}.npy", root / f"{key}.json"
    _IN_USE.add(key)

    built = False
    meta = _read_meta(meta_path, key)
    if meta is None:
        _remove_stale_tmp(root)
        meta = _build(files, settings, npy, meta_path, key, split.name, workers, progress)
        built = True
    images = _open_images(npy, meta, size)
    if images is None:  # sidecar present but array damaged (e.g. edited by hand): rebuild
        meta = _build(files, settings, npy, meta_path, key, split.name, workers, progress)
        images = _open_images(npy, meta, size)
        built = True
    if built:
        _prune_quietly(root)
    else:
        _touch(meta_path)

    failed = {int(i): reason for i, reason in meta["failures"]}
    kept = [i for i in range(len(files)) if i not in failed]
    failures = [(files[i], failed[i]) for i in sorted(failed)]
    if failures:
        first = ", ".join(f"{f.name} ({r})" for f, r in failures[:3])
        if strict:
            raise VirionError(
                f"{failures[0][0]}: {failures[0][1]}; {len(failures)} of {len(files)} {split.name} "
                f"image(s) cannot be decoded: fix or remove them, or run without --strict to skip them"
            )
        warnings.warn(
            f"skipped {len(failures)} of {len(files)} {split.name} image(s) that could not be decoded: "
            f"{first}{', ...' if len(failures) > 3 else ''}",
            SkippedFilesWarning,
            stacklevel=2,
        )
    return SplitArrays(images, labels[kept], [files[i] for i in kept], failures)


# --------------------------------------------------------------------------------------------
# housekeeping


@dataclass
class CacheEntry:
    """One cached split: `<key>.npy` and its `<key>.json` sidecar."""

    key: str
    files: list[Path]
    bytes: int
    last_used: float  # the sidecar's mtime (touched on every use), seconds since the epoch
    complete: bool  # False: an array without its sidecar (a build killed between the two renames)


@dataclass
class CacheInfo:
    """What `cache_info` reports; `summary()` is the text of ``virion cache info``."""

    folder: Path
    entries: int
    bytes: int
    oldest: datetime | None  # least recent use
    newest: datetime | None  # most recent use
    incomplete: int = 0
    temp_files: int = 0
    max_bytes: int | None = None
    max_age_days: float | None = None

    def summary(self) -> str:
        def when(t):
            return t.astimezone().strftime("%Y-%m-%d %H:%M") if t else "-"

        cap = f"{self.max_bytes / 1e9:g} GB (${MAX_GB_ENV})" if self.max_bytes else f"off (${MAX_GB_ENV}=0)"
        age = f"{self.max_age_days:g} days" if self.max_age_days else f"off (set ${MAX_AGE_ENV})"
        used = f"last used: oldest {when(self.oldest)}, newest {when(self.newest)}"
        lines = [
            f"Decode cache {self.folder} ($VIRION_CACHE_DIR to move it)",
            f"  entries: {self.entries}, {_human(self.bytes)}; {used}",
            f"  size cap: {cap}; age limit: {age}",
        ]
        if self.incomplete or self.temp_files:
            lines.append(
                f"  also {self.incomplete} incomplete entr{'y' if self.incomplete == 1 else 'ies'} and "
                f"{self.temp_files} temporary file(s) (builds in progress or interrupted)"
            )
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "folder": str(self.folder),
            "entries": self.entries,
            "bytes": self.bytes,
            "oldest": self.oldest.isoformat() if self.oldest else None,
            "newest": self.newest.isoformat() if self.newest else None,
            "incomplete": self.incomplete,
            "temp_files": self.temp_files,
            "max_bytes": self.max_bytes,
            "max_age_days": self.max_age_days,
        }


@dataclass
class PruneResult:
    """Entries removed by `clear_cache` / `prune_cache`, and what was kept because it was in use."""

    removed: int = 0
    freed_bytes: int = 0
    kept_in_use: int = 0

    def summary(self) -> str:
        kept = f"; kept {self.kept_in_use} in use" if self.kept_in_use else ""
        entries = "entry" if self.removed == 1 else "entries"
        return f"removed {self.removed} cache {entries}, freed {_human(self.freed_bytes)}{kept}"


def _human(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"  # pragma: no cover


def _env_number(name: str, default: float | None) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise VirionError(f"${name}={raw!r}: give a number of at least 0 (0 turns this limit off)")
    return value or None


def cache_limits() -> tuple[int | None, float | None]:
    """(max bytes, max age in days) from $VIRION_CACHE_MAX_GB (default 20) and $VIRION_CACHE_MAX_AGE_DAYS."""
    gb = _env_number(MAX_GB_ENV, DEFAULT_MAX_GB)
    return (int(gb * 1e9) if gb else None), _env_number(MAX_AGE_ENV, None)


def _resolve_dir(cache_dir) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _entries(root: Path) -> tuple[list[CacheEntry], int]:
    """Cache entries in `root` (only names virion writes) and the number of temp files."""
    parts: dict[str, dict[str, os.stat_result]] = {}
    temps = 0
    try:
        names = os.listdir(root)
    except OSError:
        return [], 0
    for name in names:
        m = _ENTRY_NAME.match(name)
        if m is None:
            temps += name.startswith(".") and TMP_MARK in name
            continue
        try:
            parts.setdefault(m.group(1), {})[m.group(2)] = os.stat(root / name)
        except OSError:
            continue
    entries = []
    for key, found in parts.items():
        stamp = found["json"].st_mtime if "json" in found else found["npy"].st_mtime
        entries.append(
            CacheEntry(
                key,
                [root / f"{key}.{ext}" for ext in sorted(found)],
                sum(st.st_size for st in found.values()),
                stamp,
                complete="json" in found and "npy" in found,
            )
        )
    entries.sort(key=lambda e: e.last_used)
    return entries, temps


def cache_info(cache_dir=None) -> CacheInfo:
    """Entries, bytes and the oldest/newest use of the decode cache (default folder: $VIRION_CACHE_DIR)."""
    root = _resolve_dir(cache_dir)
    entries, temps = _entries(root)
    complete = [e for e in entries if e.complete]
    max_bytes, max_age = cache_limits()

    def stamp(t):
        return datetime.fromtimestamp(t, tz=timezone.utc)

    return CacheInfo(
        root,
        len(complete),
        sum(e.bytes for e in entries),
        stamp(complete[0].last_used) if complete else None,
        stamp(complete[-1].last_used) if complete else None,
        incomplete=len(entries) - len(complete),
        temp_files=temps,
        max_bytes=max_bytes,
        max_age_days=max_age,
    )


def _remove(entry: CacheEntry, result: PruneResult) -> None:
    # Sidecar first: without it the entry no longer looks valid, even if the array outlives us.
    for path in sorted(entry.files, key=lambda p: p.suffix != ".json"):
        _unlink(path)
    result.removed += 1
    result.freed_bytes += entry.bytes


def clear_cache(cache_dir=None) -> PruneResult:
    """Remove every decode-cache entry, except those this process is using and builds in progress.

    Only files virion writes (``<key>.npy``/``.json`` and stale temp files) are touched, so a
    cache folder shared with other files is safe.
    """
    root = _resolve_dir(cache_dir)
    result = PruneResult()
    entries, _ = _entries(root)
    now = time.time()
    for entry in entries:
        if entry.key in _IN_USE or (not entry.complete and now - entry.last_used < _STALE_TMP_SECONDS):
            result.kept_in_use += 1  # in use here, or an array whose sidecar is about to be written
            continue
        _remove(entry, result)
    _remove_stale_tmp(root)
    return result


def prune_cache(
    cache_dir=None, *, max_bytes: int | None = None, max_age_days: float | None = None, now: float | None = None
) -> PruneResult:
    """Remove least-recently-used entries until the cache fits `max_bytes`, and entries unused for
    more than `max_age_days`. Limits default to `cache_limits()` (environment); None = no limit.

    Entries this process uses, entries used within the last hour and incomplete ones younger
    than the stale-temp age are kept, even if the cache stays above the cap.
    """
    root = _resolve_dir(cache_dir)
    env_bytes, env_age = cache_limits()
    max_bytes = env_bytes if max_bytes is None else (int(max_bytes) or None)
    max_age_days = env_age if max_age_days is None else (float(max_age_days) or None)
    now = time.time() if now is None else now
    result = PruneResult()
    entries, _ = _entries(root)
    total = sum(e.bytes for e in entries)
    for entry in entries:  # least recently used first
        if entry.key in _IN_USE:
            result.kept_in_use += 1
            continue
        age = now - entry.last_used
        too_old = max_age_days is not None and age > max_age_days * 86400
        over = max_bytes is not None and total > max_bytes
        stale_partial = not entry.complete and age > _STALE_TMP_SECONDS
        if not (too_old or over or stale_partial):
            continue
        if age < _RECENT_USE_SECONDS or (not entry.complete and not stale_partial):
            result.kept_in_use += 1
            continue
        _remove(entry, result)
        total -= entry.bytes
    return result


def _prune_quietly(root: Path) -> None:
    """Prune after a new entry; a bad limit or an unremovable file must not fail the run."""
    try:
        prune_cache(root)
    except VirionError as exc:
        warnings.warn(f"decode cache not pruned: {exc}", RuntimeWarning, stacklevel=3)
    except OSError:
        pass


def _touch(path: Path) -> None:
    """Mark an entry as used now (its sidecar's mtime is its last use)."""
    try:
        os.utime(path)
    except OSError:  # read-only cache: still usable, just not tracked
        pass


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


def _build(
    files: list[Path],
    settings: DecodeSettings,
    npy: Path,
    meta_path: Path,
    key: str,
    split_name: str,
    workers: int | None,
    progress: bool,
) -> dict:
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
        bar = tqdm(
            total=n,
            desc=f"Decoding {split_name}",
            unit="img",
            file=sys.stderr,
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
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
                compact[s : s + 1024] = arr[kept[s : s + 1024]]
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
        warnings.warn(f"parallel decoding unavailable ({exc}); decoding in this process", RuntimeWarning, stacklevel=3)
        return
    try:
        futures = {
            pool.submit(_decode_chunk, c, [str(files[i]) for i in c], settings): ci for ci, c in enumerate(chunks)
        }
        for future in as_completed(futures):
            store(future.result())
            done.add(futures[future])
    except (BrokenProcessPool, OSError) as exc:
        warnings.warn(
            f"parallel decoding failed ({type(exc).__name__}: {exc}); decoding the remaining files in this process",
            RuntimeWarning,
            stacklevel=3,
        )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
