"""benchmarks/bench_real.py: grouped folds that never leak a micrograph, honest scoring, and one
tiny fold through the real `virion train` CLI. Tiny made-up data only (never the shared folder)."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_real", ROOT / "benchmarks" / "bench_real.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_real"] = module
    spec.loader.exec_module(module)
    return module


def _dataset(folder: Path, groups_per_class=(2, 3, 5), per_group: int = 3, size: int = 32) -> Path:
    """Classes with a few 'micrographs' each; each micrograph's crops share a look (a brightness)."""
    rng = np.random.default_rng(0)
    lines = ["path,label,micrograph"]
    for c, n_groups in enumerate(groups_per_class):
        label = f"class {c}"  # a space, like "Rift Valley"
        (folder / "images" / label).mkdir(parents=True, exist_ok=True)
        for g in range(n_groups):
            level = rng.integers(40, 200)
            for i in range(per_group):
                name = f"images/{label}/m{c}-{g}_{i}.png"
                img = np.clip(level + rng.normal(0, 20, (size, size)) + 60 * c * (np.arange(size) > size // 2), 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(folder / name)
                lines.append(f"{name},{label},m{c}-{g}")
    (folder / "micrographs.csv").write_text("\n".join(lines) + "\n")
    return folder / "micrographs.csv"


def test_folds_keep_micrographs_together_and_every_class_in_training(bench, tmp_path):
    _, rows = bench.read_groups(_dataset(tmp_path))
    folds = bench.make_folds(rows, 3, seed=1)
    assert len(folds) == 3
    tested = []
    for split in folds:
        bench.check_fold(rows, split)  # raises on a leaked micrograph or an unseen class
        sides = {}
        for r, s in zip(rows, split):
            assert sides.setdefault(r["group"], s) == s
        assert "test" in split and "train" in split
        tested += [r["group"] for r, s in zip(rows, split) if s == "test"]
    # each micrograph is tested in one fold at most, and most are tested somewhere
    per_group = {g: tested.count(g) for g in set(tested)}
    assert max(per_group.values()) == 3  # 3 crops of one micrograph, in one fold
    assert len(per_group) >= 7
    assert bench.make_folds(rows, 3, seed=1) == folds  # seeded
    assert bench.make_folds(rows, 3, seed=2) != folds


def test_check_fold_catches_a_leak(bench, tmp_path):
    _, rows = bench.read_groups(_dataset(tmp_path))
    split = bench.make_folds(rows, 2, seed=0)[0]
    first_group = rows[0]["group"]
    leaky = list(split)
    i = next(i for i, r in enumerate(rows) if r["group"] == first_group)
    leaky[i] = "test" if split[i] != "test" else "train"
    with pytest.raises(AssertionError, match="two sides"):
        bench.check_fold(rows, leaky)


def test_manifest_reads_back_with_the_project_loader(bench, tmp_path):
    from virion.data.layout import load_dataset

    _, rows = bench.read_groups(_dataset(tmp_path))
    split = bench.make_folds(rows, 2, seed=0)[0]
    manifest = bench.write_manifest(tmp_path / "fold.csv", rows, split)
    ds = load_dataset(manifest)
    assert sum(len(s.files) for s in ds.splits.values()) == len(rows)
    assert len(ds.splits["test"].files) == split.count("test")
    assert ds.class_names == ["class 0", "class 1", "class 2"]


def test_scores_macro_f1_over_the_classes_present(bench):
    s = bench.scores(["a", "a", "b", "b"], ["a", "b", "b", "c"])
    assert s["accuracy"] == pytest.approx(0.5)
    # F1(a) = 2/3, F1(b) = 1/2; "c" is never true so it does not drag the mean down (it would: 7/18)
    assert s["macro_f1"] == pytest.approx(7 / 12)
    assert s["balanced_accuracy"] == pytest.approx(0.5)


def _fake_run(
    run: Path,
    name: str,
    probs: np.ndarray,
    truth: list[str],
    classes: list[str],
    exact: bool,
    evaluation: str = "evaluation",
    tta: bool | None = None,
):
    d = run / name / evaluation
    d.mkdir(parents=True)
    (run / name / "metadata.json").write_text(json.dumps({"class_names": classes}))
    if tta is not None:
        (d / "summary.json").write_text(json.dumps({"accuracy": 0.0, "tta": tta}))
    with open(d / "predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        extra = [f"p_{c}" for c in classes] if exact else []
        w.writerow(["file", "true_class", "predicted_class", "confidence", "top3", *extra])
        for i, (p, t) in enumerate(zip(probs, truth)):
            order = np.argsort(-p)[:3]
            top3 = ";".join(f"{classes[j]}:{p[j]:.4f}" for j in order)
            w.writerow([f"f{i}.png", t, classes[order[0]], p[order[0]], top3, *(p if exact else [])])


@pytest.mark.parametrize("exact", [True, False])
def test_ensemble_averages_probabilities(bench, tmp_path, exact):
    classes = ["a", "b", "c", "d"]
    truth = ["a", "b"]
    # model 1 is right on image 0 only, model 2 on image 1 only; their mean is right on both
    m1 = np.array([[0.6, 0.4, 0.0, 0.0], [0.55, 0.45, 0.0, 0.0]])
    m2 = np.array([[0.3, 0.0, 0.7, 0.0], [0.0, 0.9, 0.1, 0.0]])
    _fake_run(tmp_path, "m1", m1, truth, classes, exact)
    _fake_run(tmp_path, "m2", m2, truth, classes, exact)
    out = bench.score_run(tmp_path, ["m1", "m2"])
    assert out["m1"]["accuracy"] == 0.5 and out["m2"]["accuracy"] == 0.5
    assert out["ensemble"]["accuracy"] == 1.0
    assert out["ensemble"]["exact_probabilities"] is exact


def test_virion_ensemble_rows_and_the_recommended_classifier_are_scored(bench, tmp_path):
    classes, truth = ["a", "b"], ["a", "b"]
    _fake_run(tmp_path, "m1", np.array([[0.9, 0.1], [0.8, 0.2]]), truth, classes, False)  # right on image 0
    _fake_run(tmp_path, "m2", np.array([[0.4, 0.6], [0.1, 0.9]]), truth, classes, False)  # right on image 1
    # virion's own ensemble row (RUN/ensemble/evaluation), right on both: it replaces the top-3 approximation
    _fake_run(tmp_path, "ensemble", np.array([[0.7, 0.3], [0.3, 0.7]]), truth, classes, False)
    (tmp_path / "recommended.json").write_text(json.dumps({"classifier": "m2"}))
    out = bench.score_run(tmp_path, ["m1", "m2"])
    assert out["ensemble"]["accuracy"] == 1.0 and out["ensemble"]["exact_probabilities"] is True
    assert out["recommended"]["classifier"] == "m2" and out["recommended"]["accuracy"] == out["m2"]["accuracy"]
    assert "ensemble-weighted" not in out  # not written for this run


def test_score_run_records_tta_and_scores_the_folder_asked_for(bench, tmp_path):
    classes, truth = ["a", "b"], ["a", "b"]
    for name in ("m1", "m2"):
        _fake_run(tmp_path, name, np.array([[0.9, 0.1], [0.8, 0.2]]), truth, classes, True, tta=False)
        _fake_run(tmp_path, name, np.array([[0.9, 0.1], [0.2, 0.8]]), truth, classes, True, "evaluation-tta", True)
    plain = bench.score_run(tmp_path, ["m1", "m2"])
    tta = bench.score_run(tmp_path, ["m1", "m2"], evaluation="evaluation-tta")
    assert plain["m1"]["accuracy"] == 0.5 and tta["m1"]["accuracy"] == 1.0
    assert plain["m1"]["tta"] is False and tta["m1"]["tta"] is True and tta["ensemble"]["tta"] is True
    assert bench.run_tta(plain) is False and bench.run_tta(tta) is True
    assert bench.run_tta({"m1": {"tta": True}, "m2": {"tta": False}}) == "mixed"
    assert bench.run_tta({"m1": {"tta": None}}) is None  # summaries missing: unknown, not "without"


FAKE_VIRION = r"""
import json, shutil, sys
from pathlib import Path
args = sys.argv[1:]
if args[:1] == ["evaluate"]:
    assert args[2:] == ["--tta", "--no-report"], args
    run = Path(args[1])
    for model in ("m1", "m2"):
        tta = run / model / "evaluation-tta"
        shutil.copytree(run / model / "evaluation", tta)
        (tta / "predictions.csv").write_text(  # TTA puts image 1 right
            "file,true_class,predicted_class,confidence,top3,p_a,p_b\n"
            "f0.png,a,a,0.9,a:0.9;b:0.1,0.9,0.1\nf1.png,b,b,0.8,b:0.8;a:0.2,0.2,0.8\n"
        )
        (tta / "summary.json").write_text(json.dumps({"tta": True}))
"""


def test_rescore_tta_evaluates_kept_runs_with_tta_and_aggregates(bench, tmp_path, monkeypatch, capsys):
    data = _dataset(tmp_path / "data")
    script = tmp_path / "fake_virion.py"
    script.write_text(FAKE_VIRION)
    monkeypatch.setattr(bench, "virion_command", lambda: [sys.executable, str(script)])
    classes, truth = ["a", "b"], ["a", "b"]
    work = tmp_path / "work"
    for k in (0, 1):
        fold = work / "reference" / f"fold{k}"
        fold.mkdir(parents=True)
        plain = {"m1": {"accuracy": 0.5, "macro_f1": 0.3, "balanced_accuracy": 0.5, "tta": False}}
        (fold / "result.json").write_text(
            json.dumps({"recipe": "reference", "fold": k, "wall_s": 9.0, "scores": plain})
        )
    run = work / "reference" / "fold0" / "run"  # fold 1's run was not kept
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"eval_tta": False}))
    for name in ("m1", "m2"):
        _fake_run(run, name, np.array([[0.9, 0.1], [0.8, 0.2]]), truth, classes, True, tta=False)
    out = tmp_path / "tta.json"
    argv = [str(data), "--folds", "2", "--workdir", str(work), "--out", str(out), "--models", "m1", "m2"]
    assert bench.main([*argv, "--rescore-tta"]) == 0
    assert "[reference fold 1] no kept run" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["tta_rescored"] is True and list(res["per_fold"]["reference"]) == ["0"]
    fold = res["per_fold"]["reference"]["0"]
    assert fold["tta"] is True and fold["scores"]["m1"]["accuracy"] == 1.0 and fold["wall_s"] == 9.0
    assert fold["rescored"]["evaluation"] == "evaluation-tta" and "evaluate" in fold["rescored"]["command"]
    assert (work / "reference" / "fold0" / "result-tta.json").is_file()
    assert json.loads((work / "reference" / "fold0" / "result.json").read_text())["scores"] == {
        "m1": {"accuracy": 0.5, "macro_f1": 0.3, "balanced_accuracy": 0.5, "tta": False}
    }  # the plain result is kept
    assert res["table"]["reference"]["m1"]["accuracy"]["mean"] == 1.0


def test_aggregate_mean_sd_and_paired_difference(bench):
    def fold(acc):
        return {
            "wall_s": 10.0,
            "scores": {"resnet50": {"accuracy": acc, "macro_f1": acc / 2, "balanced_accuracy": acc}},
        }

    results = {"reference": {0: fold(0.4), 1: fold(0.5)}, "tem": {0: fold(0.6), 1: fold(0.9)}}
    agg = bench.aggregate(results)
    ref = agg["table"]["reference"]["resnet50"]["accuracy"]
    assert ref["mean"] == pytest.approx(0.45) and ref["sd"] == pytest.approx(np.std([0.4, 0.5], ddof=1))
    diff = agg["paired_difference_vs_reference"]["tem"]["resnet50"]["accuracy"]
    assert diff["mean"] == pytest.approx(0.3) and diff["sd"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert "tem" in bench.format_table(agg)
    single = bench.aggregate({"reference": {0: fold(0.4)}})["table"]["reference"]["resnet50"]["accuracy"]
    assert single["n"] == 1 and single["sd"] is None  # one fold: no spread, not a spread of 0
    assert "0.400 +- n/a" in bench.format_table(bench.aggregate({"reference": {0: fold(0.4)}}))


def test_model_difference_to_a_baseline_model_is_paired_by_fold(bench):
    def fold(texture, cnn):
        sc = {"accuracy": 0.0, "macro_f1": 0.0, "balanced_accuracy": 0.0}
        return {"wall_s": 1.0, "scores": {"texture": {**sc, "accuracy": texture}, "tem_cnn": {**sc, "accuracy": cnn}}}

    agg = bench.aggregate({"tem": {0: fold(0.6, 0.7), 1: fold(0.7, 0.9), 2: fold(0.5, 0.5)}}, "texture")
    diff = agg["paired_difference_vs_model_texture"]["tem"]
    assert set(diff) == {"tem_cnn"}  # the baseline is not compared with itself
    assert diff["tem_cnn"]["accuracy"]["mean"] == pytest.approx(0.1)
    assert diff["tem_cnn"]["accuracy"]["sd"] == pytest.approx(np.std([0.1, 0.2, 0.0], ddof=1))
    assert "model - texture" in bench.format_table(agg)


def _extra_manifest(folder: Path, rows: list[tuple[str, str, str]]) -> Path:
    """A `virion crops`-like manifest.csv (path,label,group,micrograph) with tiny PNGs."""
    lines = ["path,label,group,micrograph"]
    for i, (label, group, micrograph) in enumerate(rows):
        (folder / label).mkdir(parents=True, exist_ok=True)
        name = f"{label}/{group}__{micrograph}_{i}.png"
        Image.fromarray(np.full((32, 32), 40 * i % 255, np.uint8)).save(folder / name)
        lines.append(f"{name},{label},{group},{micrograph}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


def test_extra_crops_train_only_where_their_session_is_not_validated_or_tested(bench, tmp_path):
    _, rows = bench.read_groups(_dataset(tmp_path / "data"))
    split = bench.make_folds(rows, 3, seed=1)[0]
    tested = next(r["group"] for r, s in zip(rows, split) if s == "test")
    validated = next((r["group"] for r, s in zip(rows, split) if s == "validation"), tested)
    trained = next(r["group"] for r, s in zip(rows, split) if s == "train")
    extra = bench.read_extra(
        _extra_manifest(
            tmp_path / "crops",
            [
                ("class 0", "fresh-session", "fresh-session_1"),  # kept
                ("class 1", tested, tested + "_7"),  # same session as a tested micrograph: left out
                ("class 2", "s9", validated),  # a validated micrograph itself: left out
                ("class 1", trained, trained + "_3"),  # a training session: kept
                ("class 9", "new", "new_1"),  # not a class of this data: left out
            ],
        )
    )
    assert all(Path(e["path"]).is_file() for e in extra)
    assert bench.session_of("B2-65k-071019_18") == "B2-65k-071019" and bench.session_of("1149") == "1149"
    fold_rows, fold_split, left_out = bench.add_extra(rows, split, extra)
    assert left_out == 3 and len(fold_rows) == len(rows) + 2
    assert fold_split[: len(split)] == split and fold_split[len(split) :] == ["train", "train"]
    assert {r["group"] for r in fold_rows[len(rows) :]} == {"fresh-session", trained}
    bench.check_fold(fold_rows, fold_split)
    with pytest.raises(bench.BenchError, match="manifest.csv"):
        bench.read_extra(tmp_path / "nowhere" / "manifest.csv")


def test_recipes_and_missing_data_messages(bench, tmp_path, capsys):
    assert bench.parse_recipe("a=--rot90 --zoom 0.1", False).args == ("--rot90", "--zoom", "0.1")
    assert bench.parse_recipe("tem", True).args == ("--preset", "tem")
    assert bench.parse_recipe("reference", False).args == ()
    with pytest.raises(bench.BenchError, match="--preset"):
        bench.parse_recipe("tem", False)
    assert bench.main([str(tmp_path / "nowhere.csv")]) == 2
    err = capsys.readouterr().err
    assert "nowhere.csv" in err and "not part of the repo" in err and "\n" not in err.strip()


@pytest.mark.slow
def test_one_tiny_fold_end_to_end(bench, tmp_path):
    """Two folds of a 3-class toy set through the real `virion train` (32 px, one epoch), then scored;
    extra crops join the training side."""
    data = _dataset(tmp_path / "data", groups_per_class=(3, 3, 3), per_group=3)
    extra = _extra_manifest(tmp_path / "crops", [("class 0", "x", "x_1"), ("class 2", "y", "y_1")])
    out = tmp_path / "results.json"
    rc = bench.main(
        [
            str(data),
            "--folds",
            "2",
            "--only-folds",
            "0",
            "--epochs",
            "1",
            "--input-size",
            "32",
            "--workdir",
            str(tmp_path / "work"),
            "--out",
            str(out),
            "--extra=--batch-size 4",
            "--models",
            "tem_cnn",
            "--extra-train",
            str(extra),
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    fold = res["per_fold"]["reference"]["0"]
    assert fold["counts"]["test"] > 0
    assert fold["extra_train"] == {"added": 2, "left_out": 0}
    manifest = (tmp_path / "work" / "reference" / "fold0" / "fold.csv").read_text()
    assert "x__x_1_0.png,class 0,train,x" in manifest and "y__y_1_1.png,class 2,train,y" in manifest
    assert isinstance(fold["machine"]["load_before"], list) and "cpu_flags" in fold["machine"]
    assert isinstance(fold["wall_s"], float)  # recorded, never compared (timings live in benchmarks)
    s = fold["scores"]["tem_cnn"]
    assert 0.0 <= s["accuracy"] <= 1.0 and s["n_test"] == fold["counts"]["test"]
    assert res["table"]["reference"]["tem_cnn"]["accuracy"]["n"] == 1
    # --resume reads the finished fold instead of training again
    rc = bench.main(
        [
            str(data),
            "--folds",
            "2",
            "--only-folds",
            "0",
            "--epochs",
            "1",
            "--input-size",
            "32",
            "--workdir",
            str(tmp_path / "work"),
            "--out",
            str(out),
            "--resume",
        ]
    )
    assert rc == 0 and json.loads(out.read_text())["per_fold"]["reference"]["0"]["wall_s"] == fold["wall_s"]


FAKE_RESUME = r"""
import json, sys
from pathlib import Path
args = sys.argv[1:]
assert args[:2] == ["train", "--resume"], args
run = Path(args[2])
config = json.loads((run / "config.json").read_text())
assert config["eval_tta"] is True and config["out"] == str(run)
assert not (run / "m2").exists() and not (run / "recommended.json").exists()  # dropped for retraining
assert (run / "m1" / "model.keras").read_text() == "kept" and not (run / "m1" / "evaluation").exists()
for name, second in (("m1", 0.2), ("m2", 0.9)):
    d = run / name / "evaluation"
    d.mkdir(parents=True)
    (run / name / "metadata.json").write_text(json.dumps({"class_names": ["a", "b"]}))
    (d / "summary.json").write_text(json.dumps({"tta": True}))
    (d / "predictions.csv").write_text(
        "file,true_class,predicted_class,confidence,top3,p_a,p_b\n"
        f"f0.png,a,a,0.9,a:0.9;b:0.1,0.9,0.1\nf1.png,b,x,0,x,{1 - second},{second}\n"
    )
"""


def test_reuse_runs_retrains_only_the_named_models(bench, tmp_path, monkeypatch, capsys):
    data = _dataset(tmp_path / "data")
    script = tmp_path / "fake_virion.py"
    script.write_text(FAKE_RESUME)
    monkeypatch.setattr(bench, "virion_command", lambda: [sys.executable, str(script)])
    monkeypatch.setattr(bench, "presets_supported", lambda *a: True)
    old = tmp_path / "old"
    for k in (0, 1):
        run = old / "reference" / f"fold{k}" / "run"
        for name in ("m1", "m2"):
            _fake_run(run, name, np.array([[0.9, 0.1], [0.8, 0.2]]), ["a", "b"], ["a", "b"], True)
        (run / "m1" / "model.keras").write_text("kept")
        (run / "recommended.json").write_text("{}")
        (run / "comparison.csv").write_text("")
        (run / "config.json").write_text(json.dumps({"models": ["m1", "m2"], "eval_tta": False, "out": str(run)}))
    out = tmp_path / "res.json"
    argv = [str(data), "--folds", "2", "--workdir", str(tmp_path / "new"), "--out", str(out), "--models", "m1", "m2"]
    assert bench.main([*argv, "--reuse-runs", str(old), "--retrain", "m2", "--set-config", "eval_tta=true"]) == 0
    res = json.loads(out.read_text())
    fold = res["per_fold"]["reference"]["0"]
    assert fold["reused"] == {"from": str(old), "retrained": ["m2"], "set_config": {"eval_tta": True}}
    assert fold["scores"]["m2"]["accuracy"] == 1.0 and fold["scores"]["m1"]["accuracy"] == 0.5
    assert (old / "reference" / "fold0" / "run" / "m2").is_dir()  # the old workdir is left as it was
    assert bench.main([*argv, "--reuse-runs", str(old), "--retrain", "m3"]) == 2
    assert "--retrain m3: not a model of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args([str(data), "--reuse-runs", str(old)])  # nothing to retrain
