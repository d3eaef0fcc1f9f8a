"""Dataset discovery: the three layouts, what is ignored and why, stratified splits, class-list errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from virion.data.layout import Dataset, load_dataset
from virion.errors import VirionError


def _names(split):
    return [f.name for f in split.files]


def test_split_folders_like_the_tem_dataset(tmp_path, make_class_dir, write_png):
    root = tmp_path / "data"
    classes = {"Adenovirus": 4, "Nipah virus": 3, "Rift Valley": 2}
    for split in ("train", "validation", "test"):
        make_class_dir(root / split, classes)
        make_class_dir(root / split / "_EXCLUDED", {"Reovirus": 2})
        make_class_dir(root / split / "crop_outlines", {"whatever": 1})
    # Not images / hidden / sub-folder of a class: ignored and counted.
    (root / "train" / "Adenovirus" / "notes.txt").write_text("x")
    (root / "train" / "Adenovirus" / ".DS_Store").write_bytes(b"x")
    write_png(root / "train" / "Adenovirus" / "sub" / "deep.png")
    write_png(root / "train" / "Ebola" / "IMG.PNG")  # upper-case extension
    write_png(root / "validation" / "Ebola" / "a.png")
    write_png(root / "test" / "Ebola" / "a.png")

    ds = load_dataset(root)
    assert ds.layout == "split-folders"
    assert ds.class_names == ["Adenovirus", "Ebola", "Nipah virus", "Rift Valley"]
    counts = ds.counts()
    assert counts["train"] == {"Adenovirus": 4, "Ebola": 1, "Nipah virus": 3, "Rift Valley": 2}
    assert counts["validation"]["Nipah virus"] == 3 and counts["test"]["Ebola"] == 1
    assert "deep.png" not in _names(ds.splits["train"])
    # Labels follow the sorted class list.
    train = ds.splits["train"]
    for f, label in zip(train.files, train.labels):
        assert ds.class_names[label] == f.parent.name
    reasons = ds.ignored_counts()
    assert reasons["folder starting with '_' is not a class"] == 3
    assert reasons["class folder excluded by pattern 'crop_outlines'"] == 3
    assert reasons["not an image file (.txt)"] == 1
    assert reasons["hidden file or folder"] == 1
    assert reasons["sub-folder of a class folder (include_subfolders=True reads it)"] == 1
    text = ds.summary()
    assert "Nipah virus" in text and "_EXCLUDED" in text and "not an image file (.txt)" in text
    # One summary line per reason, not one per file.
    assert len(text.splitlines()) < 20


def test_include_subfolders_reads_nested_images(tmp_path, make_class_dir, write_png):
    root = make_class_dir(tmp_path / "d" / "train", {"A": 2, "B": 2}).parent
    make_class_dir(root / "test", {"A": 1, "B": 1})
    write_png(root / "train" / "A" / "sub" / "deep.png")
    write_png(root / "train" / "A" / "_rejected" / "bad.png")
    write_png(root / "train" / "B" / "crop_outlines" / "outline.png")
    ds = load_dataset(root, include_subfolders=True, val_fraction=0.0)
    names = _names(ds.splits["train"])
    assert "deep.png" in names and "bad.png" not in names and "outline.png" not in names
    assert ds.counts()["train"] == {"A": 3, "B": 2}
    assert len(ds.splits["validation"]) == 0


def test_val_alias_and_held_out_validation(tmp_path, make_class_dir):
    root = tmp_path / "d"
    make_class_dir(root / "train", {"A": 10, "B": 10})
    make_class_dir(root / "test", {"A": 2, "B": 2})
    ds = load_dataset(root, seed=3)
    assert ds.counts()["validation"] == {"A": 2, "B": 2}  # 20% of each class held out
    assert ds.counts()["train"] == {"A": 8, "B": 8}
    assert not set(ds.splits["train"].files) & set(ds.splits["validation"].files)

    make_class_dir(root / "val", {"A": 3, "B": 1})
    ds = load_dataset(root)
    assert ds.counts()["validation"] == {"A": 3, "B": 1}
    assert len(ds.splits["train"]) == 20


def test_class_folders_stratified_seeded_split(tmp_path, make_class_dir):
    root = make_class_dir(tmp_path / "d", {"big": 50, "small": 10, "mid": 25})
    ds = load_dataset(root, seed=1)
    assert ds.layout == "class-folders"
    c = ds.counts()
    for name, n in {"big": 50, "small": 10, "mid": 25}.items():
        total = c["train"][name] + c["validation"][name] + c["test"][name]
        assert total == n
        assert abs(c["test"][name] - 0.2 * n) <= 1  # stratified: each class keeps the proportion
        assert abs(c["validation"][name] - 0.2 * (n - c["test"][name])) <= 1
    all_files = [f for s in ds.splits.values() for f in s.files]
    assert len(all_files) == len(set(all_files)) == 85
    # Same seed, same split; another seed, another split.
    again = load_dataset(root, seed=1)
    assert again.splits["test"].files == ds.splits["test"].files
    other = load_dataset(root, seed=2)
    assert other.splits["test"].files != ds.splits["test"].files
    assert again.fingerprint() == ds.fingerprint()


def test_manifest_with_split_column(tmp_path, write_png):
    root = tmp_path / "m"
    rows = ["path,label,split"]
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for c in ("cat b", "cat a"):
            for i in range(n):
                rel = f"imgs/{split}_{c}_{i}.png"
                write_png(root / rel)
                rows.append(f"{rel},{c},{split}")
    rows.append("imgs/readme.txt,cat a,train")
    (root / "imgs" / "readme.txt").write_text("x")
    csv = root / "manifest.csv"
    csv.write_text("\n".join(rows) + "\n")
    ds = load_dataset(csv)
    assert ds.layout == "manifest"
    assert ds.class_names == ["cat a", "cat b"]
    assert {s: len(ds.splits[s]) for s in ds.splits} == {"train": 8, "validation": 4, "test": 4}
    assert ds.ignored_counts() == {"not an image file (.txt)": 1}
    for f, lab in zip(ds.splits["test"].files, ds.splits["test"].labels):
        assert f.name.startswith("test_") and ds.class_names[lab] in f.name
    assert json.loads(json.dumps(ds.to_json()))["counts"]["validation"] == {"cat a": 2, "cat b": 2}


def test_manifest_without_split_column(tmp_path, write_png):
    root = tmp_path / "m"
    lines = ["path,label"]
    for c, n in (("x", 20), ("y", 10)):
        for i in range(n):
            write_png(root / f"{c}{i}.png")
            lines.append(f"{c}{i}.png,{c}")
    (root / "list.csv").write_text("\n".join(lines))
    ds = load_dataset(root / "list.csv")
    c = ds.counts()
    assert c["test"] == {"x": 4, "y": 2}
    assert sum(c["train"].values()) + sum(c["validation"].values()) == 24


def test_manifest_errors(tmp_path, write_png):
    root = tmp_path / "m"
    write_png(root / "a.png")
    (root / "bad.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(VirionError, match="header"):
        load_dataset(root / "bad.csv")
    (root / "missing.csv").write_text("path,label\na.png,x\nnope.png,y\n")
    with pytest.raises(VirionError, match="nope.png"):
        load_dataset(root / "missing.csv")
    (root / "split.csv").write_text("path,label,split\na.png,x,holdout\n")
    with pytest.raises(VirionError, match="holdout"):
        load_dataset(root / "split.csv")


def test_exclude_and_classes_options(tmp_path, make_class_dir):
    root = make_class_dir(tmp_path / "d", {"Ebola": 5, "Marburg": 5, "Orf": 5, "Lassa": 5})
    ds = load_dataset(root, exclude=("M*",))
    assert ds.class_names == ["Ebola", "Lassa", "Orf"]
    assert "class folder excluded by pattern 'M*'" in ds.ignored_counts()
    ds = load_dataset(root, classes=["Orf", "Ebola"])
    assert ds.class_names == ["Ebola", "Orf"]
    assert ds.ignored_counts()["class not in the chosen classes"] == 2
    with pytest.raises(VirionError, match="'Zika'.*choose from"):
        load_dataset(root, classes=["Ebola", "Zika"])


def test_class_list_errors(tmp_path, make_class_dir):
    with pytest.raises(VirionError, match="no such file"):
        load_dataset(tmp_path / "nowhere")
    one = make_class_dir(tmp_path / "one", {"A": 3})
    with pytest.raises(VirionError, match="at least two"):
        load_dataset(one)
    empty = make_class_dir(tmp_path / "empty", {"A": 3, "B": 3})
    (empty / "C").mkdir()
    (empty / "C" / "notes.txt").write_text("no images here")
    with pytest.raises(VirionError, match=r"C: class folder has no images"):
        load_dataset(empty)
    split = tmp_path / "split"
    make_class_dir(split / "train", {"A": 3, "B": 3})
    make_class_dir(split / "test", {"A": 1, "B": 1, "Zika": 1})
    with pytest.raises(VirionError, match="'Zika' is in test/ but not in train/"):
        load_dataset(split)
    # Excluding the stray class makes it valid again.
    assert load_dataset(split, exclude=["Zika"], val_fraction=0).class_names == ["A", "B"]
    with pytest.raises(VirionError, match="val_fraction"):
        load_dataset(split, val_fraction=1.5)


def test_error_messages_are_one_line(tmp_path, make_class_dir):
    root = make_class_dir(tmp_path / "d", {"A": 1, "B": 5})
    with pytest.raises(VirionError) as info:
        load_dataset(root)
    assert "\n" not in str(info.value) and "'A'" in str(info.value)


def test_fingerprint_changes_with_a_file(tmp_path, make_class_dir, write_png):
    root = make_class_dir(tmp_path / "d", {"A": 5, "B": 5})
    before = load_dataset(root).fingerprint()
    write_png(root / "A" / "img_000.png", value=1, size=20)
    assert load_dataset(root).fingerprint() != before


def test_to_json_is_serialisable(tmp_path, make_class_dir):
    root = make_class_dir(tmp_path / "d", {"A": 5, "B": 5})
    (root / "README.md").write_text("x")
    ds = load_dataset(root)
    assert isinstance(ds, Dataset)
    data = json.loads(json.dumps(ds.to_json()))
    assert data["class_names"] == ["A", "B"] and data["fingerprint"] == ds.fingerprint()
    assert data["ignored"] == [{"path": "README.md", "reason": "file outside a class folder"}]
    assert isinstance(ds.splits["train"].labels, np.ndarray) and ds.splits["train"].labels.dtype == np.int64
    assert all(isinstance(f, Path) for f in ds.splits["train"].files)
