"""virion's own files at a dataset's root (synth's README/montage/marker, the demo's marker) are not
the user's: the dataset listing does not report them as ignored; a user's stray files still are."""

from __future__ import annotations

import dataclasses
import json

from virion.data.layout import load_dataset

OWN = ["README.txt", "demo-complete.json", "montage.png", "synth.json"]


def _ignored_names(dataset) -> list[str]:
    return sorted(p.name for p, _ in dataset.ignored)


def test_the_demo_data_reports_only_the_users_stray_file(tmp_path, capsys):
    from virion import workflow

    preset = dataclasses.replace(workflow.PRESETS["tiny"], per_class=3, image_size=32)
    folder = workflow.synthetic_data(tmp_path, "tiny", preset, seed=0)
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == OWN  # what synth and the demo wrote
    (folder / "notes.txt").write_text("mine")

    dataset = load_dataset(folder)
    assert _ignored_names(dataset) == ["notes.txt"]
    summary = dataset.summary()
    assert "Ignored 1 entries" in summary and "notes.txt" in summary
    assert not any(name in summary for name in OWN)
    assert [entry["path"] for entry in dataset.to_json()["ignored"]] == ["notes.txt"]
    assert sorted(json.loads((folder / "synth.json").read_text())["own_files"]) == OWN


def test_the_same_names_in_a_users_folder_are_still_ignored(tmp_path, make_class_dir):
    root = make_class_dir(tmp_path / "data", {"A": 5, "B": 5})
    for name in OWN:
        (root / name).write_text("{}")
    assert _ignored_names(load_dataset(root)) == OWN  # a synth.json virion did not write changes nothing

    # Another program's marker listing names does not count either; only virion synth's does.
    (root / "synth.json").write_text(json.dumps({"generator": "other", "own_files": OWN}))
    assert _ignored_names(load_dataset(root)) == OWN


def test_only_the_names_virions_marker_lists_are_passed_over(tmp_path, make_class_dir):
    root = make_class_dir(tmp_path / "data", {"A": 5, "B": 5})
    for name in ("README.txt", "montage.png", "notes.txt"):
        (root / name).write_text("x")
    marker = {"generator": "virion synth", "own_files": ["README.txt", "synth.json", "A/img_000.png", "../x"]}
    (root / "synth.json").write_text(json.dumps(marker))
    dataset = load_dataset(root)  # class-folder layout this time
    assert _ignored_names(dataset) == ["montage.png", "notes.txt"]
    assert dataset.counts()["train"]["A"] + dataset.counts()["validation"]["A"] + dataset.counts()["test"]["A"] == 5
