"""Decode-cache housekeeping: info, clear, and LRU / age pruning that never removes what is in use."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import virion.data.cache as cache_mod
from virion.data.cache import cache_info, clear_cache, load_split_arrays, prune_cache
from virion.data.decode import DecodeSettings
from virion.data.layout import Split
from virion.errors import VirionError


@pytest.fixture(autouse=True)
def _fresh_process_state(monkeypatch):
    """Each test starts as a fresh process: nothing in use, default limits."""
    monkeypatch.setattr(cache_mod, "_IN_USE", set())
    monkeypatch.delenv("VIRION_CACHE_MAX_GB", raising=False)
    monkeypatch.delenv("VIRION_CACHE_MAX_AGE_DAYS", raising=False)


def _splits(tmp_path, write_png, n=3):
    """n one-image splits with distinct files, hence n distinct cache entries."""
    return [
        Split("train", [write_png(tmp_path / "img" / f"{i}.png", value=20 * i + 5)], np.array([0])) for i in range(n)
    ]


def _build(split, cache):
    return load_split_arrays(split, DecodeSettings(size=16), cache_dir=cache, progress=False)


def _age(cache, key, seconds):
    """Pretend the entry was last used `seconds` ago."""
    t = time.time() - seconds
    for ext in ("npy", "json"):
        os.utime(cache / f"{key}.{ext}", (t, t))


def _keys(cache):
    return sorted(p.stem for p in cache.glob("*.json"))


def _forget_in_use():
    cache_mod._IN_USE.clear()  # as if the run that built them had ended


def test_info_on_missing_and_filled_cache(tmp_path, write_png):
    empty = cache_info(tmp_path / "none")
    assert (empty.entries, empty.bytes, empty.oldest, empty.newest) == (0, 0, None, None)
    cache = tmp_path / "c"
    for s in _splits(tmp_path, write_png, 2):
        _build(s, cache)
    k_old, k_new = _keys(cache)
    _age(cache, k_old, 7200)
    (cache / "notes.txt").write_text("not ours")
    info = cache_info(cache)
    assert info.entries == 2
    assert info.bytes == sum(os.path.getsize(cache / f"{k}.{e}") for k in (k_old, k_new) for e in ("npy", "json"))
    assert info.oldest < info.newest
    assert abs(info.oldest.timestamp() - (time.time() - 7200)) < 60
    assert info.max_bytes == 20 * 10**9 and info.max_age_days is None
    text = info.summary()
    assert "VIRION_CACHE_DIR" in text and "2" in text and "--cache-dir" not in text
    assert info.to_json()["entries"] == 2


def test_using_an_entry_marks_it_recently_used(tmp_path, write_png):
    cache = tmp_path / "c"
    (split,) = _splits(tmp_path, write_png, 1)
    _build(split, cache)
    (key,) = _keys(cache)
    _age(cache, key, 86400)
    _build(split, cache)  # a cache hit
    assert time.time() - os.path.getmtime(cache / f"{key}.json") < 60


def test_prune_by_size_removes_least_recently_used_first(tmp_path, write_png):
    cache = tmp_path / "c"
    splits = _splits(tmp_path, write_png, 3)
    for s in splits:
        _build(s, cache)
    _forget_in_use()
    keys = _keys(cache)
    for key, age in zip(keys, (3 * 3600, 5 * 3600, 4 * 3600)):
        _age(cache, key, age)
    one = cache_info(cache).bytes // 3
    result = prune_cache(cache, max_bytes=one + 10)
    assert result.removed == 2 and result.freed_bytes >= 2 * one - 10
    assert _keys(cache) == [keys[0]]  # the most recently used one stays
    assert not list(cache.glob(f"{keys[1]}.*")) and not list(cache.glob(f"{keys[2]}.*"))


def test_prune_never_removes_entries_in_use_or_just_used(tmp_path, write_png):
    cache = tmp_path / "c"
    splits = _splits(tmp_path, write_png, 3)
    for s in splits:
        _build(s, cache)
    keys = _keys(cache)
    for key in keys:
        _age(cache, key, 5 * 3600)
    # All three are in use by this process: a zero-byte cap removes nothing.
    assert prune_cache(cache, max_bytes=1).removed == 0 and _keys(cache) == keys
    _forget_in_use()
    _build(splits[0], cache)  # in use again (and just used)
    in_use = cache_mod.cache_key([splits[0].files[0]], DecodeSettings(size=16))
    _forget_in_use()
    # Used a minute ago by another run: kept too; the two idle ones go.
    result = prune_cache(cache, max_bytes=1)
    assert _keys(cache) == [in_use] and result.removed == 2 and result.kept_in_use == 1


def test_prune_by_age(tmp_path, write_png):
    cache = tmp_path / "c"
    for s in _splits(tmp_path, write_png, 2):
        _build(s, cache)
    _forget_in_use()
    old, new = _keys(cache)
    _age(cache, old, 40 * 86400)
    _age(cache, new, 2 * 86400)
    assert prune_cache(cache, max_bytes=0, max_age_days=30).removed == 1
    assert _keys(cache) == [new]


def test_new_entry_triggers_pruning_with_the_environment_cap(tmp_path, write_png, monkeypatch):
    cache = tmp_path / "c"
    first, second = _splits(tmp_path, write_png, 2)
    _build(first, cache)
    (old,) = _keys(cache)
    _age(cache, old, 3 * 3600)
    _forget_in_use()
    monkeypatch.setenv("VIRION_CACHE_MAX_GB", "0.000000001")  # 1 byte: anything idle goes
    arrays = _build(second, cache)
    (kept,) = _keys(cache)
    assert kept != old and arrays.images.shape == (1, 16, 16)  # the new entry survives its own pruning
    monkeypatch.setenv("VIRION_CACHE_MAX_GB", "0")  # cap off
    assert cache_info(cache).max_bytes is None


def test_clear_cache_keeps_what_is_in_use_and_foreign_files(tmp_path, write_png):
    cache = tmp_path / "c"
    splits = _splits(tmp_path, write_png, 3)
    for s in splits[:2]:
        _build(s, cache)
    _forget_in_use()
    _build(splits[2], cache)  # this one is in use by the current run
    (cache / "notes.txt").write_text("not ours")
    # A build in progress elsewhere: an array renamed into place, sidecar not yet written.
    (cache / ("f" * 40 + ".npy")).write_bytes(b"partial")
    result = clear_cache(cache)
    assert result.removed == 2 and result.kept_in_use == 2
    assert len(_keys(cache)) == 1 and (cache / "notes.txt").exists() and (cache / ("f" * 40 + ".npy")).exists()
    _forget_in_use()
    last = clear_cache(cache)
    assert last.removed == 1 and _keys(cache) == []
    assert last.summary().startswith("removed 1 cache entry")


@pytest.mark.parametrize("value", ["lots", "-1", "nan"])
def test_bad_limit_in_the_environment_is_named(tmp_path, monkeypatch, value):
    monkeypatch.setenv("VIRION_CACHE_MAX_GB", value)
    with pytest.raises(VirionError, match="VIRION_CACHE_MAX_GB"):
        cache_info(tmp_path)


def test_unwritable_cache_folder_names_the_environment_variable(tmp_path, write_png):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    (split,) = _splits(tmp_path, write_png, 1)
    with pytest.raises(VirionError) as info:
        _build(split, blocker / "cache")
    msg = str(info.value)
    assert "VIRION_CACHE_DIR" in msg and "--cache-dir" not in msg and str(blocker) in msg
