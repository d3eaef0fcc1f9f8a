"""The decode-once cache: built once, reused without decoding, rebuilt on change, never left corrupt."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

import virion.data.cache as cache_mod
import virion.data.decode as decode_mod
from virion.data.cache import SkippedFilesWarning, load_split_arrays, write_failures
from virion.data.decode import DecodeSettings
from virion.data.layout import Split
from virion.errors import VirionError

SETTINGS = DecodeSettings(size=16)


@pytest.fixture
def split(tmp_path, write_png):
    """Six tiny PNGs whose constant values (10, 20, ...) identify them after decoding."""
    files = [write_png(tmp_path / "img" / f"{i}.png", value=10 * (i + 1)) for i in range(6)]
    return Split("train", files, np.array([0, 1, 0, 1, 0, 1]))


def _values(images):
    return [int(im[0, 0]) for im in images]


def _cache_files(cache_dir):
    return sorted(p.name for p in cache_dir.iterdir()) if cache_dir.exists() else []


def test_first_call_decodes_second_reuses(tmp_path, split, monkeypatch):
    cache = tmp_path / "cache"
    first = load_split_arrays(split, SETTINGS, cache_dir=cache, progress=False)
    assert first.images.shape == (6, 16, 16) and first.images.dtype == np.uint8
    assert _values(first.images) == [10, 20, 30, 40, 50, 60]
    np.testing.assert_array_equal(first.labels, split.labels)
    assert first.files == split.files and first.failures == []
    assert sum(name.endswith(".npy") for name in _cache_files(cache)) == 1
    assert not any(".tmp" in name for name in _cache_files(cache))

    def boom(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(decode_mod, "decode_image", boom)
    second = load_split_arrays(split, SETTINGS, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(np.asarray(second.images), np.asarray(first.images))
    assert isinstance(second.images, np.memmap) and not second.images.flags.writeable


def test_default_cache_dir_from_environment(tmp_path, split, monkeypatch):
    monkeypatch.setenv("VIRION_CACHE_DIR", str(tmp_path / "envcache"))
    load_split_arrays(split, SETTINGS, progress=False)
    assert any(p.suffix == ".npy" for p in (tmp_path / "envcache").iterdir())


def test_rebuilt_when_a_file_or_setting_changes(tmp_path, split, write_png):
    cache = tmp_path / "cache"
    load_split_arrays(split, SETTINGS, cache_dir=cache, progress=False)
    write_png(split.files[2], value=99)
    st = os.stat(split.files[2])
    os.utime(split.files[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # filesystems with coarse mtimes
    again = load_split_arrays(split, SETTINGS, cache_dir=cache, progress=False)
    assert _values(again.images) == [10, 20, 99, 40, 50, 60]
    bigger = load_split_arrays(split, DecodeSettings(size=8), cache_dir=cache, progress=False)
    assert bigger.images.shape == (6, 8, 8)
    assert sum(name.endswith(".npy") for name in _cache_files(cache)) == 3


def test_interrupted_build_leaves_no_cache(tmp_path, split, monkeypatch):
    cache = tmp_path / "cache"
    real = decode_mod.decode_image
    calls = []

    def interrupt_after_three(path, settings):
        calls.append(path)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real(path, settings)

    monkeypatch.setattr(decode_mod, "decode_image", interrupt_after_three)
    with pytest.raises(KeyboardInterrupt):
        load_split_arrays(split, SETTINGS, cache_dir=cache, progress=False)
    assert _cache_files(cache) == []  # no final file, no temp file

    monkeypatch.setattr(decode_mod, "decode_image", real)
    good = load_split_arrays(split, SETTINGS, cache_dir=cache, progress=False)
    assert _values(good.images) == [10, 20, 30, 40, 50, 60]


def test_damaged_or_half_written_entry_is_rebuilt(tmp_path, split):
    cache = tmp_path / "cache"
    load_split_arrays(split, SETTINGS, cache_dir=cache, progress=False)
    (npy,) = cache.glob("*.npy")
    (meta,) = cache.glob("*.json")
    # A crash between the array's rename and the sidecar's: the array alone is not trusted.
    meta.unlink()
    npy.write_bytes(b"garbage")
    again = load_split_arrays(split, SETTINGS, cache_dir=cache, progress=False)
    assert _values(again.images) == [10, 20, 30, 40, 50, 60]
    # Sidecar present but the array truncated: detected and rebuilt too.
    npy.write_bytes(npy.read_bytes()[:200])
    again = load_split_arrays(split, SETTINGS, cache_dir=cache, progress=False)
    assert _values(again.images) == [10, 20, 30, 40, 50, 60]


def test_failures_are_skipped_listed_and_warned(tmp_path, split):
    split.files[1].write_bytes(b"")
    split.files[4].write_bytes(b"not a png at all")
    cache = tmp_path / "cache"
    with pytest.warns(SkippedFilesWarning, match=r"skipped 2 of 6 train.*1\.png"):
        arrays = load_split_arrays(split, SETTINGS, cache_dir=cache, progress=False)
    assert _values(arrays.images) == [10, 30, 40, 60]
    np.testing.assert_array_equal(arrays.labels, [0, 0, 1, 1])
    assert [f.name for f in arrays.files] == ["0.png", "2.png", "3.png", "5.png"]
    assert [f.name for f, _ in arrays.failures] == ["1.png", "4.png"]
    assert "empty" in arrays.failures[0][1]
    # Reused from the cache, the failures are still reported.
    with pytest.warns(SkippedFilesWarning):
        again = load_split_arrays(split, SETTINGS, cache_dir=cache, progress=False)
    assert again.failures == arrays.failures

    out = write_failures(arrays.failures, tmp_path / "run" / "skipped_files.txt")
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(split.files[1]) + "\t")
    assert all(len(line.split("\t")) == 2 for line in lines)


def test_strict_mode_raises(tmp_path, split):
    split.files[3].write_bytes(b"\x89PNG broken")
    with pytest.raises(VirionError, match=r"3\.png.*1 of 6 train image\(s\) cannot be decoded.*--strict"):
        load_split_arrays(split, SETTINGS, cache_dir=tmp_path / "c", strict=True, progress=False)


def test_all_files_failing_and_empty_split(tmp_path, split):
    for f in split.files:
        f.write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFilesWarning)
        arrays = load_split_arrays(split, SETTINGS, cache_dir=tmp_path / "c", progress=False)
        again = load_split_arrays(split, SETTINGS, cache_dir=tmp_path / "c", progress=False)
    assert arrays.images.shape == (0, 16, 16) and len(arrays.failures) == 6
    assert again.images.shape == (0, 16, 16)
    empty = load_split_arrays(Split("validation", [], np.zeros(0)), SETTINGS, cache_dir=tmp_path / "c")
    assert empty.images.shape == (0, 16, 16) and empty.labels.dtype == np.int64


def test_parallel_decode_matches_serial(tmp_path, write_png, monkeypatch):
    files = [write_png(tmp_path / "p" / f"{i:02d}.png", value=i * 5) for i in range(20)]
    files[7].write_bytes(b"")
    split = Split("test", files, np.arange(20) % 2)
    monkeypatch.setattr(cache_mod, "PARALLEL_MIN_FILES", 0)
    with pytest.warns(SkippedFilesWarning):
        par = load_split_arrays(split, SETTINGS, cache_dir=tmp_path / "par", workers=2, progress=False)
        ser = load_split_arrays(split, SETTINGS, cache_dir=tmp_path / "ser", workers=1, progress=False)
    np.testing.assert_array_equal(np.asarray(par.images), np.asarray(ser.images))
    assert _values(par.images) == [i * 5 for i in range(20) if i != 7]
    assert par.failures == ser.failures and par.files == ser.files


def test_progress_bar_goes_to_stderr(tmp_path, split, capsys):
    load_split_arrays(split, SETTINGS, cache_dir=tmp_path / "c", progress=True)
    captured = capsys.readouterr()
    assert "Decoding train" in captured.err and captured.out == ""


def test_broken_pool_falls_back_to_serial(tmp_path, split, monkeypatch):
    from concurrent.futures.process import BrokenProcessPool

    class DeadPool:
        def __init__(self, *args, **kwargs):
            pass

        def submit(self, *args, **kwargs):
            raise BrokenProcessPool("a worker died")

        def shutdown(self, *args, **kwargs):
            pass

    monkeypatch.setattr(cache_mod, "ProcessPoolExecutor", DeadPool)
    monkeypatch.setattr(cache_mod, "PARALLEL_MIN_FILES", 0)
    with pytest.warns(RuntimeWarning, match="parallel decoding failed"):
        arrays = load_split_arrays(split, SETTINGS, cache_dir=tmp_path / "c", workers=2, progress=False)
    assert _values(arrays.images) == [10, 20, 30, 40, 50, 60] and arrays.failures == []
