"""Grouped splits: crops of one micrograph never end up on two sides of a split made here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from virion.data.layout import GROUP_BY_EXAMPLE, Split, group_of, load_dataset
from virion.errors import VirionError


def _micrograph_folders(root, write_png, plan):
    """plan: {class: [crops per micrograph, ...]} -> class folders of <class>-m<k>_<i>.png crops."""
    for c, sizes in plan.items():
        for m, n in enumerate(sizes):
            for i in range(n):
                write_png(root / c / f"{c}-m{m}_{i}.png", value=(m * 31 + i) % 256)
    return root


def _groups_by_split(ds):
    return {s: set(ds.splits[s].groups) for s in ds.splits}


def _assert_no_group_on_two_sides(ds):
    seen = _groups_by_split(ds)
    assert not seen["train"] & seen["validation"]
    assert not seen["train"] & seen["test"]
    assert not seen["validation"] & seen["test"]


def test_group_of_uses_capture_group_or_whole_match(tmp_path):
    assert group_of(tmp_path / "B2-65k-071019_18_7.png", GROUP_BY_EXAMPLE) == "B2-65k-071019_18"
    assert group_of("x/grid3_img12.tif", r"grid\d+") == "grid3"  # no capture group: whole match
    with pytest.raises(VirionError) as info:
        group_of("x/nonumber.png", GROUP_BY_EXAMPLE)
    msg = str(info.value)
    assert "nonumber.png" in msg and "group_by" in msg and "\n" not in msg


def test_class_folders_grouped_split_keeps_micrographs_whole(tmp_path, write_png):
    plan = {"A": [6, 5, 4, 4, 3, 3, 2, 2], "B": [7, 5, 5, 3, 3, 2, 2, 1], "C": [4, 4, 4, 4, 3, 3, 3]}
    root = _micrograph_folders(tmp_path / "d", write_png, plan)
    ds = load_dataset(root, group_by=GROUP_BY_EXAMPLE, seed=3)
    assert ds.grouped and ds.group_by == GROUP_BY_EXAMPLE
    _assert_no_group_on_two_sides(ds)
    counts = ds.counts()
    for c in plan:  # stratified: every class is on each side (each has enough micrographs)
        assert all(counts[s][c] > 0 for s in ("train", "validation", "test")), (c, counts)
    total = sum(len(s) for s in ds.splits.values())
    assert total == sum(map(sum, plan.values()))
    assert 0.1 < len(ds.splits["test"]) / total < 0.3
    # Groups travel with their files, and every file's group is its micrograph.
    for split in ds.splits.values():
        for f, g in zip(split.files, split.groups):
            assert f.stem.rsplit("_", 1)[0] == g
    gc = ds.group_counts()
    assert gc == {s: len(_groups_by_split(ds)[s]) for s in ("train", "validation", "test")}
    assert sum(gc.values()) == sum(len(v) for v in plan.values())
    text = ds.summary()
    groups_line = next(line for line in text.splitlines() if line.strip().startswith("groups"))
    assert groups_line.split()[1:] == [str(gc[s]) for s in ("train", "validation", "test")]
    assert GROUP_BY_EXAMPLE in text


def test_grouped_split_is_seeded_and_deterministic(tmp_path, write_png):
    plan = {"A": [3] * 10, "B": [2] * 12}
    root = _micrograph_folders(tmp_path / "d", write_png, plan)
    first = load_dataset(root, group_by=GROUP_BY_EXAMPLE, seed=0)
    again = load_dataset(root, group_by=GROUP_BY_EXAMPLE, seed=0)
    other = load_dataset(root, group_by=GROUP_BY_EXAMPLE, seed=5)
    assert first.splits["test"].files == again.splits["test"].files
    assert first.splits["validation"].groups == again.splits["validation"].groups
    assert first.fingerprint() == again.fingerprint()
    assert set(first.splits["test"].groups) != set(other.splits["test"].groups)
    _assert_no_group_on_two_sides(other)


def test_grouped_split_as_far_as_groups_allow(tmp_path, write_png):
    # A: one big and one small micrograph (the big one must stay in training);
    # B: a single micrograph (cannot be held out at all without leaving no training images).
    plan = {"A": [20, 3], "B": [6], "C": [3, 3, 3, 3, 3]}
    root = _micrograph_folders(tmp_path / "d", write_png, plan)
    ds = load_dataset(root, group_by=GROUP_BY_EXAMPLE, val_fraction=0.0, test_fraction=0.2)
    _assert_no_group_on_two_sides(ds)
    counts = ds.counts()
    assert counts["test"]["A"] == 3 and counts["train"]["A"] == 20
    assert counts["test"]["B"] == 0 and counts["train"]["B"] == 6
    assert counts["test"]["C"] == 3  # 20% of 15 = one micrograph of 3


def test_manifest_group_column_and_micrograph_alias(tmp_path, write_png):
    root = tmp_path / "m"
    for column in ("group", "micrograph"):
        rows = [f"path,label,{column}"]
        for c in ("x", "y"):
            for m in range(6):
                for i in range(2):
                    rel = f"img/{c}{m}{i}.png"  # names say nothing about the group: the column does
                    write_png(root / rel)
                    rows.append(f"{rel},{c},mic-{c}-{m}")
        (root / f"{column}.csv").write_text("\n".join(rows) + "\n")
        ds = load_dataset(root / f"{column}.csv", seed=1)
        assert ds.grouped and ds.group_by is None
        _assert_no_group_on_two_sides(ds)
        for split in ds.splits.values():
            for f, g in zip(split.files, split.groups):
                assert g == f"mic-{f.stem[0]}-{f.stem[1]}"
        info = json.loads(json.dumps(ds.to_json()))
        assert info["group_counts"] == ds.group_counts()


def test_manifest_given_splits_are_kept_and_leaks_noted(tmp_path, write_png):
    root = tmp_path / "m"
    rows = ["path,label,split,group"]
    for c in ("x", "y"):
        for i in range(4):
            write_png(root / f"{c}{i}.png")
            split = "test" if i == 3 else "train"
            group = "shared" if (c == "x" and i in (2, 3)) else f"{c}{i}"
            rows.append(f"{c}{i}.png,{c},{split},{group}")
    (root / "m.csv").write_text("\n".join(rows))
    ds = load_dataset(root / "m.csv", val_fraction=0.25)
    assert [f.name for f in ds.splits["test"].files] == ["x3.png", "y3.png"]
    # x2 (train rows) and x3 (test row) share a group: the given split leaks, and the summary says so.
    assert ds.shared_groups() == ["shared"]
    assert "more than one" in ds.summary()
    assert not (set(ds.splits["validation"].groups) & set(ds.splits["train"].groups))  # made here: whole groups


def test_group_errors_are_one_line(tmp_path, write_png):
    root = _micrograph_folders(tmp_path / "d", write_png, {"A": [2, 2], "B": [2, 2]})
    write_png(root / "A" / "odd.png")
    with pytest.raises(VirionError) as info:
        load_dataset(root, group_by=GROUP_BY_EXAMPLE)
    assert "odd.png" in str(info.value) and "group_by" in str(info.value)
    with pytest.raises(VirionError, match="regular expression"):
        load_dataset(root, group_by="(unclosed")
    one = _micrograph_folders(tmp_path / "one", write_png, {"A": [3], "B": [3]})
    with pytest.raises(VirionError, match="group"):
        load_dataset(one, group_by=r"^(\w)")  # every file in one group per class -> nothing to hold out
    m = tmp_path / "m"
    write_png(m / "a_1.png")
    write_png(m / "b_1.png")
    (m / "empty.csv").write_text("path,label,group\na_1.png,x,g1\nb_1.png,y,\n")
    with pytest.raises(VirionError, match="line 3"):
        load_dataset(m / "empty.csv")
    (m / "both.csv").write_text("path,label,group\na_1.png,x,g1\nb_1.png,y,g2\n")
    with pytest.raises(VirionError, match="group_by"):
        load_dataset(m / "both.csv", group_by=GROUP_BY_EXAMPLE)


def test_ungrouped_dataset_is_unchanged(tmp_path, make_class_dir):
    root = make_class_dir(tmp_path / "d", {"A": 10, "B": 10})
    ds = load_dataset(root)
    assert not ds.grouped and ds.group_counts() is None
    assert all(s.groups is None for s in ds.splits.values())
    assert "groups" not in ds.summary()
    # Groups enter the fingerprint (so a change of grouping is a different dataset).
    grouped = load_dataset(root, group_by=r"^(.*)_\d+$", val_fraction=0.0, test_fraction=0.0)
    plain = load_dataset(root, val_fraction=0.0, test_fraction=0.0)
    assert [f.name for f in grouped.splits["train"].files] == [f.name for f in plain.splits["train"].files]
    assert grouped.fingerprint() != plain.fingerprint()


def test_split_checks_group_length():
    with pytest.raises(ValueError):
        Split("train", ["a.png", "b.png"], np.array([0, 1]), groups=["g"])
    assert Split("train", ["a.png"], np.array([0]), groups=["g"]).num_groups == 1
