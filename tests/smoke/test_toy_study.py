"""The toy study end to end (the session's smoke run, conftest.py): every configuration trained and learning,
every stage's outputs, a bundle segmenting new scans, and studies in folders named as users name them."""
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from reference_metrics import organisers_pinkcc
from workflow_helpers import (ODD_NAME, PROFILES, REPO, TOY_CONFIG, job_count, odd_folder_study, run,
                              same_probabilities, snakemake, validation_probabilities, weights_digest)

pytestmark = pytest.mark.smoke


def test_segment_anatomy_rule_runs_totalsegmentator_offline(toy_workdir, tmp_path):
    """The rule as a CPU user runs it, with the weights folder from config (a fixture-built tiny model)."""
    from totalseg_fixture import build_tiny_totalseg_home

    home = build_tiny_totalseg_home(tmp_path / ODD_NAME / "totalseg_home", predicted_class="vertebrae_L3")
    config = yaml.safe_load(TOY_CONFIG.read_text())
    config["anatomy"] = {"source": "totalsegmentator", "totalseg_home": str(home), "task": "total", "fast": True}
    path = tmp_path / "totalseg.yaml"
    path.write_text(yaml.safe_dump(config))
    # Its own workdir: the smoke run's results must hold only what the toy config makes (the SLURM test compares).
    workdir = tmp_path / ODD_NAME / "workdir"
    (workdir / "resources").mkdir(parents=True)
    (workdir / "resources/toy").symlink_to(toy_workdir / "resources/toy")
    target = "results/anatomy/toy_001.nii.gz"
    snakemake(workdir, target, "--cores", "1", "--configfile", path)
    anatomy = sitk.ReadImage(str(workdir / target))
    image = sitk.ReadImage(str(workdir / "resources/toy/imagesTr/toy_001.nii.gz"))
    assert anatomy.GetSize() == image.GetSize()
    from workflow_scripts.anatomy import anatomy_class_ids

    assert np.unique(sitk.GetArrayFromImage(anatomy)).tolist() == [anatomy_class_ids("total")["vertebrae_L3"]]
    assert (workdir / "results/benchmarks/segment_anatomy/toy_001.tsv").exists()
    # Anatomy-aware label QC through its rule on that map: the tiny model calls every voxel vertebra L3, so the
    # label lies in bone (flagged), and no flip or shift can help (nothing proposed).
    snakemake(workdir, "results/qc/anatomy/toy_001.tsv", "--cores", "1", "--configfile", path)
    table = pd.read_csv(workdir / "results/qc/anatomy/toy_001.tsv", sep="\t")
    flagged = table[table["check"] == "label_anatomy"]
    assert flagged["message"].str.contains(r"100% of it lies inside \['vertebrae_\*'", regex=True).any()
    assert set(flagged["severity"]) == {"warning", "info"}  # the lung rule: no lung in this map, not checked
    assert table[table["check"] == "label_anatomy_proposal"]["message"].str.startswith("no flip or shift").all()
    assert not (workdir / "results/qc/anatomy/toy_001_proposal/label.nii.gz").exists()


def test_preflight_times_one_totalsegmentator_call_offline(toy_workdir, tmp_path):
    """The preflight's TotalSegmentator probe: the weights check, then one real `totalsegmentator()` call with the
    fixture's tiny model, in a process of its own (TotalSegmentator reads its home on import)."""
    from totalseg_fixture import build_tiny_totalseg_home

    home = build_tiny_totalseg_home(tmp_path / ODD_NAME / "totalseg_home")
    image = toy_workdir / "resources/toy/imagesTr/toy_001.nii.gz"
    code = ("import json, sys, torch\nfrom pathlib import Path\nfrom workflow_scripts import preflight\n"
            "anatomy = {'source': 'totalsegmentator', 'task': 'total', 'fast': True, 'roi_subset': None}\n"
            "home, image, work = map(Path, sys.argv[1:])\n"
            "rows = preflight.weights_check(anatomy, home)\n"
            "rows += preflight.probe_totalsegmentator(anatomy, home, image, 1000, 3000, work, torch.device('cpu'), 1)\n"
            "print(json.dumps(rows))\n")
    result = run([sys.executable, "-c", code, home, image, tmp_path], cwd=REPO)
    rows = {(r["check"], r["measure"]): r for r in json.loads(result.stdout.splitlines()[-1])}
    assert rows[("totalsegmentator_weights", "")]["status"] == "pass"
    seconds = rows[("totalsegmentator", "seconds_per_case")]["value"]
    assert seconds > 0 and rows[("totalsegmentator", "projected_hours")]["value"] == pytest.approx(3 * seconds / 3600)
    assert sitk.ReadImage(str(tmp_path / "anatomy.nii.gz")).GetSize() == sitk.ReadImage(str(image)).GetSize()


def test_qc_on_error_exclude_keeps_failing_training_cases_out_of_everything(toy_workdir, tmp_path):
    """A label with an unknown value and an image named off the case pattern stop the default run; with
    qc.on_error: exclude they are left out of the splits, the nnU-Net datasets and every later job, and QC says
    why."""
    shutil.copytree(toy_workdir / "resources", tmp_path / "resources", symlinks=True)
    label_path = tmp_path / "resources/toy/labelsTr/toy_003.nii.gz"
    label = sitk.ReadImage(str(label_path))
    array = sitk.GetArrayFromImage(label)
    array[0, 0, 0] = 7
    broken = sitk.GetImageFromArray(array)
    broken.CopyInformation(label)
    sitk.WriteImage(broken, str(label_path))
    shutil.copyfile(tmp_path / "resources/toy/imagesTr/toy_004.nii.gz", tmp_path / "resources/toy/imagesTr/toy 4.nii.gz")
    config = yaml.safe_load(TOY_CONFIG.read_text())
    (tmp_path / "stop.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake(tmp_path, "results/qc/passing_cases.json", "--cores", "2", "--configfile", "stop.yaml",
                       check=False)
    assert result.returncode != 0
    assert "toy_003: [label_values] label values [7]" in result.stderr and "qc.on_error: exclude" in result.stderr
    assert "toy 4: [case_name]" in result.stderr  # an image named off data.case_pattern
    config["qc"]["on_error"] = "exclude"
    (tmp_path / "exclude.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    configurations = list(config["configurations"])
    targets = ["results/splits/splits_final.json",
               *[f"results/datasets/{name}/dataset_summary.json" for name in configurations]]
    snakemake(tmp_path, *targets, "--cores", "2", "--configfile", "exclude.yaml")
    passing = json.loads((tmp_path / "results/qc/passing_cases.json").read_text())
    assert "toy_003" not in passing["train"] and len(passing["train"]) == 11 and len(passing["test"]) == 3
    assert passing["excluded"]["toy_003"].startswith("excluded by qc.on_error: exclude after errors in label_values")
    assert passing["excluded"]["toy 4"].startswith("excluded by qc.on_error: exclude after errors in case_name")
    splits = json.loads((tmp_path / "results/splits/splits_final.json").read_text())
    assert sorted(c for fold in splits for c in fold["val"]) == sorted(passing["train"])
    for name in configurations:
        summary = json.loads((tmp_path / f"results/datasets/{name}/dataset_summary.json").read_text())
        assert sorted(summary["cases"]) == sorted(passing["train"])
        assert not list((tmp_path / "results/nnunet/nnUNet_raw").glob("*/imagesTr/toy_003_0000.nii.gz"))
    table = pd.read_csv(tmp_path / "results/qc/qc_table.tsv", sep="\t")
    assert table[(table["case"] == "toy_003") & (table["check"] == "excluded")].shape[0] == 1
    # The rest of the DAG, now that the checkpoint has run: 11 training cases everywhere, all 3 new cases.
    plan = snakemake(tmp_path, "-n", "--configfile", "exclude.yaml").stdout
    assert job_count(plan, "gather_oof") == 11  # one per case, every configuration
    assert job_count(plan, "ensemble_case") == 11 and job_count(plan, "refine_case") == 11 + 3
    assert job_count(plan, "predict_test") == 2  # the 3 new cases in prediction.parts: 2 jobs, every configuration
    assert "toy_003" not in plan


def test_every_fold_of_every_configuration_trained_and_learned(smoke_run):
    config = yaml.safe_load(TOY_CONFIG.read_text())
    train_cases = sorted(p.name[: -len(".nii.gz")] for p in (smoke_run / "results/inputs/train").glob("*.nii.gz"))
    splits = json.loads((smoke_run / "results/splits/splits_final.json").read_text())
    for name, conf in config["configurations"].items():
        validated = []
        for fold in range(5):
            summary = json.loads((smoke_run / f"results/training/{name}/fold_{fold}.json").read_text())
            assert summary["epochs"] == conf["trainer_settings"]["num_epochs"]
            assert summary["validation_cases"] == splits[fold]["val"], "the shared split was used"
            assert Path(summary["output_folder"], "checkpoint_final.pth").exists()
            for case in summary["validation_cases"]:  # nnU-Net's float32 export rewritten as float16 (disk)
                with np.load(Path(summary["output_folder"], "validation", f"{case}.npz")) as data:
                    assert data["probabilities"].dtype == np.float16, (name, fold, case)
            # Learning, not just shapes: the loss falls well below where it started.
            assert np.mean(summary["train_losses"][-3:]) < summary["train_losses"][0] - 0.1, summary["train_losses"]
            validated += summary["validation_cases"]
        assert sorted(validated) == train_cases
        splits_copy = smoke_run / f"results/nnunet/nnUNet_preprocessed/Dataset{conf['dataset_id']}_{name}/splits_final.json"
        assert json.loads(splits_copy.read_text()) == splits


def test_preflight_ran_the_study_path_before_any_training(smoke_run):
    """The preflight's table: every check passed (TotalSegmentator skipped: precomputed anatomy), each
    configuration trained a few iterations with the study's plans, the largest case went through the new-case path,
    the projections follow from what was measured, nothing of the probes is left, and training began after it."""
    config = yaml.safe_load(TOY_CONFIG.read_text())
    table = pd.read_csv(smoke_run / "results/preflight/preflight.tsv", sep="\t")
    status = table.drop_duplicates("check").set_index("check")["status"].to_dict()
    assert status == {"nnunet_version": "pass", "device": "pass", "totalsegmentator_weights": "skipped",
                      "training": "pass", "prediction": "pass", "disk": "pass"}
    training = table[table["check"] == "training"].pivot(index="subject", columns="measure", values="value")
    assert sorted(training.index) == sorted(config["configurations"])
    for name, measures in training.iterrows():
        settings = config["configurations"][name]["trainer_settings"]
        iterations = settings["num_iterations_per_epoch"] * settings["num_epochs"] * 5
        assert measures["seconds_per_iteration"] > 0 and measures["peak_rss_mb"] > 0
        assert measures["projected_training_hours"] == pytest.approx(
            measures["seconds_per_iteration"] * iterations / 3600, rel=1e-5)
    voxels = {p.name[: -len(".nii.gz")]: np.prod(sitk.ReadImage(str(p)).GetSize())
              for p in (smoke_run / "results/inputs").glob("*/*.nii.gz")}
    prediction = table[table["check"] == "prediction"].set_index("measure")
    (probed,) = set(prediction["subject"])
    assert voxels[probed] == max(voxels.values())  # a largest case (the toy's are all one size)
    assert prediction.loc["seconds_per_case", "value"] > 0
    disk = table[table["check"] == "disk"].set_index("measure")["value"]
    assert disk["free_gb"] > disk["needed_gb"] > 0
    assert "checkpoints not counted" not in table[table["check"] == "disk"]["detail"].iloc[0]
    passed = json.loads((smoke_run / "results/preflight/passed.json").read_text())
    assert passed["training_hours"] == pytest.approx(training["projected_training_hours"].sum(), rel=1e-5)
    assert not (smoke_run / "results/preflight/work").exists()
    gate = (smoke_run / "results/preflight/passed.json").stat().st_mtime
    logs = sorted((smoke_run / "results/nnunet/nnUNet_results").glob("*/*/fold_*/training_log_*.txt"))
    assert len({log.parent for log in logs}) == 15  # a training the chaos run killed has a log per run
    for log in logs:  # nnU-Net names each log by the time its training started
        started = time.mktime(time.strptime(log.name[len("training_log_"): -len(".txt")], "%Y_%m_%d_%H_%M_%S"))
        assert started >= int(gate) - 1, log


def training_logs(fold: Path) -> list[tuple[float, list[int]]]:
    """A fold's nnU-Net logs, one per run, oldest first: when the run started (nnU-Net names each log by that
    time, to the second) and the epochs it began."""
    logs = []
    for log in fold.glob("training_log_*.txt"):
        started = time.mktime(time.strptime(log.name[len("training_log_"): -len(".txt")], "%Y_%m_%d_%H_%M_%S"))
        logs.append((started, [int(e) for e in re.findall(r": Epoch (\d+)\s*$", log.read_text(), re.MULTILINE)]))
    return sorted(logs)


def test_the_study_killed_at_seeded_moments_lost_nothing(smoke_run):
    """The smoke study's Snakemake process group was killed with SIGKILL at seeded moments over the whole DAG
    (tests/chaos.py) and recovered each time with `--unlock` and the same command. Every training killed after a
    checkpoint went on from it, nothing temporary or half-written is left, and Snakemake finds nothing to redo.
    The outputs equal the uninterrupted SLURM study's file for file (test_slurm.py) and, where both compute the
    same thing, byte for byte; a resumed fold's weights equal its uninterrupted training's (the twin test at the
    end of this file)."""
    record = json.loads((smoke_run / "chaos.json").read_text())
    stages = [kill["stage"] for kill in record["kills"]]
    assert record["missed"] == [] and len(stages) >= 6 and record["runs"] == len(stages) + 1
    assert {"qc", "planning", "training", "selection", "prediction", "report"} <= set(stages)
    resumed = 0
    for kill in record["kills"]:
        killed_at = kill["killed_at"]
        for fold, epoch in kill["checkpoints"].items():
            after = [epochs for started, epochs in training_logs(smoke_run / fold) if started >= int(killed_at)]
            assert after and after[0][:1] == [epoch], (kill["stage"], fold, epoch, after)  # not from scratch
            resumed += 1
    assert resumed >= 1  # the training kill caught a fold between its checkpoints
    # Nothing half-written: no temporary of an atomic write (".<name>.<random>.tmp<suffix>"), no partial file,
    # no scratch folder of the preflight, and no job Snakemake still marks as incomplete.
    leftovers = [p for p in (smoke_run / "results").rglob("*")
                 if re.search(r"\.tmp|\.partial$|~$", p.name) or p.name == "work"]
    assert leftovers == []
    assert not any((smoke_run / ".snakemake/incomplete").rglob("*"))
    dry = snakemake(smoke_run, "--profile", PROFILES["local"], "--configfile", TOY_CONFIG, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr


def preprocessed_spacing(results, dataset, case):
    """Spacing of a preprocessed case: its physical extent before resampling over its voxels after."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    folder = results / "nnunet/nnUNet_preprocessed" / dataset / "nnUNetPlans_3d_fullres"
    if not folder.exists():
        folder = next((results / "nnunet/nnUNet_preprocessed" / dataset).glob("*_3d_fullres"))
    data, _, _, properties = infer_dataset_class(str(folder))(str(folder)).load_case(case)
    extent = np.asarray(properties["shape_after_cropping_and_before_resampling"]) * np.asarray(properties["spacing"])
    return extent / np.asarray(data.shape[1:])


def test_configurations_are_planned_as_configured(smoke_run):
    resenc = json.loads((smoke_run / "results/datasets/resenc_multiclass/plans_summary.json").read_text())
    iso = json.loads((smoke_run / "results/datasets/isotropic_multiclass/plans_summary.json").read_text())
    assert resenc["plans_identifier"] == "nnUNetResEncUNetMPlans" and "ResidualEncoderUNet" in resenc["network"]
    assert len(set(np.round(iso["spacing"], 4))) == 1, f"isotropic spacing expected, got {iso['spacing']}"
    assert len(set(np.round(resenc["spacing"], 4))) == 2
    # nnU-Net re-plans the network for the spacing: isotropic pooling at isotropic spacing only.
    strides = {name: json.loads(Path(s["plans_file"]).read_text())["configurations"]["3d_fullres"]["architecture"]
               ["arch_kwargs"]["strides"] for name, s in (("iso", iso), ("resenc", resenc))}
    assert all(len(set(stride)) == 1 for stride in strides["iso"]), strides
    assert any(len(set(stride)) > 1 for stride in strides["resenc"]), strides
    iso_spacing = preprocessed_spacing(smoke_run / "results", "Dataset502_isotropic_multiclass", "toy_000")
    assert np.ptp(iso_spacing) / iso_spacing.mean() < 0.05, f"preprocessed data not isotropic: {iso_spacing}"
    resenc_spacing = preprocessed_spacing(smoke_run / "results", "Dataset501_resenc_multiclass", "toy_000")
    assert resenc_spacing[0] > 2 * resenc_spacing[1], f"the ResEnc data keeps its thick slices: {resenc_spacing}"
    raw = smoke_run / "results/nnunet/nnUNet_raw/Dataset503_metastasis_only/labelsTr"
    values = set()
    for path in raw.glob("*.nii.gz"):
        values |= set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).tolist())
    assert values == {0, 1}


def test_predictions_of_every_stage_exist_on_the_input_grid(smoke_run):
    # The toy data hold DICOM cases, so every rule reads the images from results/inputs/ (links and conversions).
    for split, folder in (("oof", "train"), ("test", "test")):
        cases = sorted(p.name[: -len(".nii.gz")] for p in (smoke_run / f"results/inputs/{folder}").glob("*.nii.gz"))
        assert len(cases) == {"oof": 12, "test": 3}[split]
        for stage in ("resenc_multiclass", "isotropic_multiclass", "metastasis_only", "ensemble", "refined"):
            for case in cases:
                seg = sitk.ReadImage(str(smoke_run / f"results/predictions/{split}/{stage}/{case}.nii.gz"))
                image = sitk.ReadImage(str(smoke_run / f"results/inputs/{folder}/{case}.nii.gz"))
                assert seg.GetSize() == image.GetSize()
                assert np.allclose(seg.GetSpacing(), image.GetSpacing())
        with np.load(smoke_run / f"results/predictions/{split}/metastasis_only/{cases[0]}.npz") as data:
            assert list(data["labels"]) == [0, 2]
        if split == "oof":  # nothing reads an out-of-fold ensemble's probabilities: only its label map is written
            assert not list((smoke_run / "results/predictions/oof/ensemble").glob("*.npz"))
        else:
            with np.load(smoke_run / f"results/predictions/{split}/ensemble/{cases[0]}.npz") as data:
                assert list(data["labels"]) == [0, 1, 2]
                np.testing.assert_allclose(data["probabilities"].astype(np.float32).sum(axis=0), 1.0, atol=1e-2)
        removed = pd.read_csv(smoke_run / f"results/refinement/{split}/{cases[0]}.tsv", sep="\t")
        assert list(removed.columns)[:3] == ["case", "rule", "label"]


# Dice floors on the 3 held-out cases, averaged over the cases whose reference holds the class (the lesion-free
# case, which scores 1 when left empty, carries none of them). Each is the lowest value of 3 toy runs (`make toy`
# with data seeds 0, 1, 2; docs/testing.md) less 0.15 for CPU training's run-to-run spread, rounded down to 0.05.
# Tables are written with 6 significant digits: a score in [0.1, 1) read back lies within half a unit of its 6th
# digit of the value computed.
SIX_DIGITS = 5e-7
# pinkcc.tsv is computed from the per-case tables, whose tolerant Dice are so rounded (the score weighs their mean
# by 0.5; its F2 half comes from exact voxel counts), and then rounded itself.
PINKCC_TSV_ROUNDING = 0.5 * SIX_DIGITS + SIX_DIGITS


DICE_FLOORS = {
    "refined": {"primary": 0.6, "metastasis": 0.75},             # lowest seen 0.784, 0.944
    "ensemble": {"primary": 0.6, "metastasis": 0.7},             # 0.784, 0.895
    "resenc_multiclass": {"primary": 0.55, "metastasis": 0.35},  # 0.724, 0.531
    "isotropic_multiclass": {"primary": 0.6, "metastasis": 0.4},  # 0.791, 0.590
    "metastasis_only": {"metastasis": 0.75},                     # 0.943
}


def dice_over_cases_holding_the_class(results: Path, split: str, stage: str) -> pd.DataFrame:
    """Mean Dice per class over the cases whose reference holds the class, with their count."""
    per_case = pd.read_csv(results / f"metrics/{split}/{stage}.tsv", sep="\t")
    held = per_case[per_case["reference_ml"] > 0]
    return held.groupby("class")["dice"].agg(["mean", "count"])


def test_toy_study_learns_both_lesion_classes(smoke_run):
    """Every configuration learns every class it predicts, and the chosen pipeline segments both classes of the
    held-out cases. A chance-level mask scores about 0.01 (lesions are 0.1-1 % of the volume), so a floor fails
    when training, prediction, ensembling, fusion or the label bookkeeping breaks, or a class is not learned."""
    summary = pd.read_csv(smoke_run / "results/metrics/summary.tsv", sep="\t")
    assert set(summary["stage"]) == set(DICE_FLOORS) | {"oof_nested"} and set(summary["split"]) == {"oof", "test"}
    test_dice = summary[(summary["metric"] == "dice") & (summary["split"] == "test")]
    assert len(test_dice) == 9 and (test_dice["n"] == 3).all(), test_dice  # every class of every stage, every case
    reference = {}
    for case in ("toy_100", "toy_101", "toy_102"):
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(smoke_run / f"resources/toy/labelsTs/{case}.nii.gz")))
        reference[case] = set(np.unique(label).tolist())
    holding = {name: sum(value in labels for labels in reference.values())
               for name, value in (("primary", 1), ("metastasis", 2))}
    assert holding == {"primary": 3, "metastasis": 2}, reference  # toy_102 has no metastasis
    seen = {}
    for stage, floors in DICE_FLOORS.items():
        dice = dice_over_cases_holding_the_class(smoke_run / "results", "test", stage)
        assert set(dice.index) == set(floors), (stage, dice)  # a partial model is scored on its own class only
        for name, floor in floors.items():
            assert dice.loc[name, "count"] == holding[name], (stage, name, dice)
            seen[(stage, name)] = round(float(dice.loc[name, "mean"]), 3)
    failed = {key: value for key, value in seen.items() if value < DICE_FLOORS[key[0]][key[1]]}
    assert not failed, f"below the floor: {failed}; all: {seen}"


def test_qc_of_the_smoke_run_agrees_with_the_evaluation(smoke_run):
    """Clean toy data: no errors or warnings; QC's label volumes are the evaluation's reference volumes."""
    table = pd.read_csv(smoke_run / "results/qc/qc_table.tsv", sep="\t")
    assert set(table["severity"]) == {"info"}, table[table["severity"] != "info"].to_string()
    summary = pd.read_csv(smoke_run / "results/qc/dataset_summary.tsv", sep="\t").set_index("case")
    assert (summary["split"] == "train").sum() == 12 and (summary["split"] == "test").sum() == 3
    reference = pd.read_csv(smoke_run / "results/metrics/oof/ensemble.tsv", sep="\t")
    assert len(reference) == 24  # 12 cases, 2 classes
    for _, row in reference.iterrows():
        name = row["class"]
        assert summary.loc[row["case"], f"{name}_ml"] == pytest.approx(row["reference_ml"], rel=1e-4), row["case"]
        assert summary.loc[row["case"], f"{name}_lesions"] == row["lesions_reference"], row["case"]


def test_dicom_cases_were_converted_exactly_and_no_patient_tag_reached_any_output(smoke_run, tmp_path):
    """toy_011 (training) and toy_102 (new) are DICOM series folders with made-up patient tags."""
    import gzip
    import zipfile

    from workflow_scripts.toy_data import SYNTHETIC_PATIENT_TAGS, generate_toy_dataset

    as_nifti = tmp_path / "toy"
    generate_toy_dataset(as_nifti)  # the same phantoms, every case as NIfTI
    for case, folder, original in (("toy_011", "train", "imagesTr"), ("toy_102", "test", "imagesTs")):
        assert (smoke_run / "resources/toy" / original / case).is_dir()
        converted = sitk.ReadImage(str(smoke_run / f"results/inputs/{folder}/{case}.nii.gz"))
        expected = sitk.ReadImage(str(as_nifti / original / f"{case}.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(converted), sitk.GetArrayFromImage(expected))
        np.testing.assert_allclose(converted.GetSpacing(), expected.GetSpacing(), rtol=1e-5)
        np.testing.assert_allclose(converted.GetOrigin(), expected.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(converted.GetDirection(), expected.GetDirection(), atol=1e-6)
        for stage in ("ensemble", "refined"):
            split = "oof" if folder == "train" else "test"
            assert (smoke_run / f"results/predictions/{split}/{stage}/{case}.nii.gz").exists()
    qc = pd.read_csv(smoke_run / "results/qc/qc_table.tsv", sep="\t")
    series = qc[qc["check"] == "dicom_series"].set_index("case")["message"]
    assert sorted(series.index) == ["toy_011", "toy_102"]
    assert series["toy_011"].startswith("series 12 (CT, 32 slices) chosen by rule most_slices")
    # Not one made-up patient tag in any output, log or the report (compressed files read inflated).
    secrets = [value.encode() for value in SYNTHETIC_PATIENT_TAGS.values()]
    scanned = 0
    for root in ("results", "logs", "benchmarks"):
        for path in (smoke_run / root).rglob("*"):
            if path.parts[-4:-2] == ("dicom", "test"):  # DICOM results carry what the standard requires of them
                continue
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                if path.name.endswith(".gz"):
                    data = gzip.decompress(data)
                elif path.suffix in (".npz", ".zip"):
                    with zipfile.ZipFile(path) as archive:
                        data = b"".join(archive.read(name) for name in archive.namelist())
                assert not any(secret in data for secret in secrets), path
                scanned += 1
    assert scanned > 200
    # The check can fail: the DICOM files themselves hold the tags.
    dicom_file = next((smoke_run / "resources/toy/imagesTr/toy_011").iterdir()).read_bytes()
    assert all(secret in dicom_file for secret in secrets)


def test_the_new_dicom_case_has_a_seg_an_rtstruct_and_a_report_that_independent_tools_accept(smoke_run, tmp_path):
    """toy_102 came as a DICOM series: its refined label map as a DICOM Segmentation on that series, which
    dciodvfy accepts and dcmqi reads back voxel for voxel at every source slice; as an RT structure set, which
    dciodvfy accepts and plastimatch rasterises back to each lesion of 1 ml or more with Dice >= 0.95; its lesions
    of the burden table as a measurement report dciodvfy accepts. The NIfTI new cases get none, and the run says
    so once."""
    import cc3d
    import pydicom
    from scipy import ndimage

    from dicom_judges import (at_source_slice, dciodvfy_errors, dice, measurement_groups, rasterise_with_plastimatch,
                              read_back_with_dcmqi)
    from workflow_scripts.dicom_results import source_slices

    folder = smoke_run / "results/dicom/test/toy_102"
    seg = folder / "segmentation.dcm"
    assert sorted(p.name for p in (smoke_run / "results/dicom/test").iterdir()) == ["toy_102"]
    assert sorted(p.name for p in folder.iterdir()) == ["measurements.dcm", "rtstruct.dcm", "segmentation.dcm"]
    assert [dciodvfy_errors(folder / name) for name in sorted(p.name for p in folder.iterdir())] == [[], [], []]
    back = read_back_with_dcmqi(seg, tmp_path / "dcmqi")
    refined = sitk.GetArrayFromImage(sitk.ReadImage(str(smoke_run / "results/predictions/test/refined/toy_102.nii.gz")))
    labels = yaml.safe_load(TOY_CONFIG.read_text())["labels"]
    segment_of = {value: number for number, value in enumerate(list(labels.values())[1:], 1)}
    source = source_slices(smoke_run / "resources/toy/imagesTs/toy_102", "most_slices")
    assert len(source) == refined.shape[0] and refined.any()
    for k, ds in enumerate(source):
        expected = np.vectorize(lambda v: segment_of.get(v, 0))(refined[k])
        assert np.array_equal(at_source_slice(back, ds), expected), k

    masks = rasterise_with_plastimatch(folder / "rtstruct.dcm", smoke_run / "resources/toy/imagesTs/toy_102",
                                       tmp_path / "plastimatch")
    # plastimatch writes no image for an ROI without contours (a class the case does not hold)
    assert sorted(masks) == sorted(name for name in list(labels)[1:] if (refined == labels[name]).any())
    image = sitk.ReadImage(str(smoke_run / "results/predictions/test/refined/toy_102.nii.gz"))
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000
    judged = []
    for name, mask in masks.items():
        rasterised = np.stack([at_source_slice(mask, ds) for ds in source]) > 0
        lesions = cc3d.connected_components(refined == labels[name], connectivity=26)
        for lesion in range(1, int(lesions.max()) + 1):
            voxels = lesions == lesion
            if voxels.sum() * voxel_ml >= 1.0:
                near = ndimage.binary_dilation(voxels, iterations=2)
                judged.append((name, lesion, dice(rasterised & near, voxels)))
    assert judged and all(score >= 0.95 for _, _, score in judged), judged

    lesions = pd.read_csv(smoke_run / "results/burden/test/lesions.tsv", sep="\t")
    lesions = lesions[lesions["case"] == "toy_102"]
    groups = measurement_groups(pydicom.dcmread(folder / "measurements.dcm"))
    assert [g["Tracking Identifier"] for g in groups] == [f"{c} lesion {n}" for c, n in zip(lesions["class"],
                                                                                            lesions["lesion"])] + [
        f"{name} (all lesions)" for name in list(labels)[1:]]
    np.testing.assert_allclose([g["Volume"] for g in groups[:len(lesions)]], lesions["volume_ml"], rtol=1e-6)
    last_run = sorted(smoke_run.glob("chaos_run_*.log"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))[-1]
    said = [line for line in last_run.read_text().splitlines() if line.startswith("dicom_results:")]
    assert said == ["dicom_results: 2 new case(s) came as NIfTI (toy_100, toy_101): DICOM results are written only "
                    "for DICOM series"]


def test_metric_tables_of_the_smoke_run(smoke_run):
    metrics = smoke_run / "results/metrics"
    pinkcc = pd.read_csv(metrics / "pinkcc.tsv", sep="\t").set_index(["split", "stage"])
    # The test cases' ensemble scored by the organisers' definition, rendered independently on the label maps.
    cases = ("toy_100", "toy_101", "toy_102")
    references, predictions = ([sitk.GetArrayFromImage(sitk.ReadImage(str(smoke_run / folder / f"{case}.nii.gz")))
                                for case in cases]
                               for folder in ("resources/toy/labelsTs", "results/predictions/test/ensemble"))
    assert pinkcc.loc[("test", "ensemble"), "pinkcc_score"] == pytest.approx(
        organisers_pinkcc(references, predictions), abs=PINKCC_TSV_ROUNDING)
    comparisons = pd.read_csv(metrics / "comparisons.tsv", sep="\t")
    pair = comparisons[(comparisons["split"] == "oof") & (comparisons["class"] == "primary")
                       & (comparisons["metric"] == "dice") & (comparisons["stage_a"] == "ensemble")
                       & (comparisons["stage_b"] == "refined")]
    assert len(pair) == 1 and pair["n_pairs"].iloc[0] == 12
    per_case = pd.read_csv(metrics / "test/ensemble.tsv", sep="\t")
    for column in ("hd95_mm", "assd_mm", "nsd_1mm", "nsd_2mm", "lesion_f1", "lesion_dice", "dice_dilated"):
        assert column in per_case.columns, column
    assert per_case["convention"].str.startswith("both empty: scores 1").all()
    runtime = pd.read_csv(smoke_run / "results/runtime/runtime.tsv", sep="\t").set_index("rule")
    assert runtime.loc["train_fold", "jobs"] == 15 and runtime.loc["qc_case", "jobs"] == 15


def test_ensemble_and_refinement_were_chosen_on_out_of_fold_predictions(smoke_run):
    """The selection's own scores agree with the evaluation of what the workflow then wrote."""
    pinkcc = pd.read_csv(smoke_run / "results/metrics/pinkcc.tsv", sep="\t").set_index(["split", "stage"])
    pinkcc = pinkcc["pinkcc_score"]
    candidates = pd.read_csv(smoke_run / "results/ensemble/candidates.tsv", sep="\t").set_index("candidate")
    assert len(candidates) == 3 * 4 and candidates["selected"].sum() == 1  # 3 member subsets x (no fusion + 3)
    selected = json.loads((smoke_run / "results/ensemble/selected.json").read_text())
    assert candidates.loc[selected["candidate"], "rank"] == 1
    assert candidates["score"].max() == pytest.approx(selected["score"], abs=SIX_DIGITS)
    assert pinkcc[("oof", "ensemble")] == pytest.approx(selected["score"], abs=PINKCC_TSV_ROUNDING)
    for single in ("resenc_multiclass", "isotropic_multiclass"):  # a lone member is that configuration
        assert candidates.loc[single, "score"] == pytest.approx(pinkcc[("oof", single)],
                                                               abs=SIX_DIGITS + PINKCC_TSV_ROUNDING)
    rules = json.loads((smoke_run / "results/refinement/selected_rules.json").read_text())
    assert rules["score_without"] == pytest.approx(pinkcc[("oof", "ensemble")], abs=PINKCC_TSV_ROUNDING)
    assert pinkcc[("oof", "refined")] == pytest.approx(rules["score_with"], abs=PINKCC_TSV_ROUNDING)
    # The choice is the greedy path through the subsets' table: a rule is kept when it raises the score.
    subsets = pd.read_csv(smoke_run / "results/refinement/rule_subsets.tsv", sep="\t").set_index("rules")
    assert len(subsets) == 2 ** 3 and subsets["chosen"].sum() == 1
    names = [rule["name"] for rule in yaml.safe_load(TOY_CONFIG.read_text())["refinement"]["rules"]]
    kept = []
    for name in names:
        before, after = subsets.loc[",".join(kept) or "none", "score"], subsets.loc[",".join(kept + [name]), "score"]
        assert abs(after - before) > SIX_DIGITS or after == before, (name, before, after)  # no tie hidden by rounding
        kept += [name] if after > before else []
    chosen = ",".join(kept) or "none"
    assert rules["apply"] == "if_improves" and [rule["name"] for rule in rules["rules"]] == kept
    assert subsets.index[subsets["chosen"]].tolist() == [chosen]
    assert rules["score_with"] == pytest.approx(subsets.loc[chosen, "score"], abs=SIX_DIGITS)
    assert rules["score_without"] == pytest.approx(subsets.loc["none", "score"], abs=SIX_DIGITS)
    # Nested: each fold's held-out cases segmented by the choice made on the other folds; a fold that chose as
    # the study did has exactly the refined stage's segmentations.
    folds = pd.read_csv(smoke_run / "results/nested/folds.tsv", sep="\t")
    splits = json.loads((smoke_run / "results/splits/splits_final.json").read_text())
    assert folds["held_out"].tolist() == [",".join(split["val"]) for split in splits]
    for fold in folds.itertuples():
        if fold.ensemble == selected["candidate"] and fold.rules == (",".join(r["name"] for r in rules["rules"])
                                                                    or "none"):
            for case in fold.held_out.split(","):
                nested = sitk.ReadImage(str(smoke_run / f"results/predictions/oof/oof_nested/{case}.nii.gz"))
                refined = sitk.ReadImage(str(smoke_run / f"results/predictions/oof/refined/{case}.nii.gz"))
                assert np.array_equal(sitk.GetArrayFromImage(nested), sitk.GetArrayFromImage(refined)), case
    flagged = pd.read_csv(smoke_run / "results/metrics/pinkcc.tsv", sep="\t").set_index(["split", "stage"])
    assert flagged["selection_biased"].to_dict() == {
        (split, stage): split == "oof" and stage in ("ensemble", "refined") for split, stage in flagged.index}
    assert ("oof", "oof_nested") in flagged.index and ("test", "oof_nested") not in flagged.index
    comparisons = pd.read_csv(smoke_run / "results/metrics/comparisons.tsv", sep="\t")
    biased = (comparisons["split"] == "oof") & comparisons[["stage_a", "stage_b"]].isin(["ensemble", "refined"]).any(
        axis=1)
    assert comparisons["selection_biased"].tolist() == biased.tolist()
    names = [r["name"] for r in rules["rules"]]
    test_case = sorted((smoke_run / "resources/toy/imagesTs").glob("*.nii.gz"))[0].name[: -len(".nii.gz")]
    log = (smoke_run / f"logs/refine_case/test/{test_case}.log").read_text()
    assert f"rules {names or 'none'}" in log
    removed = pd.read_csv(smoke_run / f"results/refinement/test/{test_case}.tsv", sep="\t")
    assert set(removed["rule"]) <= set(names)


# Batches drawn from nnU-Net's own training pipeline (initial patch size, augmentation, deep-supervision targets),
# built by the trainer our training code makes for given settings. A patch counts as lesion-centred when its
# target holds a lesion voxel in the central 2 x 2 x 2 block: rotation and scaling turn about the patch centre,
# and mirroring an even-sized patch moves its centre voxel by one.
OVERSAMPLING_PROBE = """
import json, sys
import numpy as np
import torch
from workflow_scripts.nnunet_seam import configure_nnunet, training_batches
configure_nnunet(sys.argv[1], 1)
from workflow_scripts.training import make_trainer
for settings in map(json.loads, sys.argv[4:]):
    trainer = make_trainer(sys.argv[2], sys.argv[3], "nnUNetTrainer", 0, settings, torch.device("cpu"))
    np.random.seed(0)
    torch.manual_seed(0)
    batches = training_batches(trainer)
    centre = tuple(slice(s // 2 - 1, s // 2 + 1) for s in trainer.configuration_manager.patch_size)
    hits = total = 0
    for _ in range(300):
        target = next(batches)["target"]
        target = target[0] if isinstance(target, (list, tuple)) else target
        hits += int((target[(slice(None), 0, *centre)] > 0).flatten(1).any(1).sum())
        total += target.shape[0]
    print("RESULT", json.dumps({"fraction": hits / total, "patches": total, "batch_size": trainer.batch_size,
                                "patch_size": list(target.shape[2:])}))
"""


def test_oversampling_centres_the_configured_share_of_patches_on_metastases(smoke_run, tmp_path):
    """The metastasis model's training batches, 600 patches per setting: the share centred on a metastasis,
    against p r + (1 - p) q, with q the share when no patch is forced onto a lesion and r when every patch is
    (augmentation moves some forced centres off a lesion), within 4 binomial standard deviations. nnU-Net's
    default forces whole batch items: at batch size 2 its 0.33 gives one patch of two. The template's
    metastasis_only draws each patch (probabilistic_oversampling) with p = 0.75, a share the default cannot give;
    the test fails if the template's setting is ignored (its share is then the default's)."""
    dataset = "Dataset503_metastasis_only"
    root = tmp_path / "nnunet"  # a copy: the trainer writes a log under nnUNet_results
    shutil.copytree(smoke_run / "results/nnunet/nnUNet_preprocessed" / dataset, root / "nnUNet_preprocessed" / dataset)
    template = yaml.safe_load((REPO / "config/config.yaml").read_text())["configurations"]["metastasis_only"]
    metastasis_only = {k: v for k, v in template["trainer_settings"].items() if k != "save_every"}
    assert metastasis_only == {"oversample_foreground_percent": 0.75, "probabilistic_oversampling": True}
    settings = [{"oversample_foreground_percent": 0.0}, {"oversample_foreground_percent": 1.0}, {},
                metastasis_only]
    result = run([sys.executable, "-c", OVERSAMPLING_PROBE, root, dataset, "nnUNetPlans",
                  *map(json.dumps, settings)], cwd=tmp_path)
    measured = [json.loads(line.split(" ", 1)[1]) for line in result.stdout.splitlines() if line.startswith("RESULT")]
    assert [m["batch_size"] for m in measured] == [2] * 4 and [m["patches"] for m in measured] == [600] * 4
    assert measured[0]["patch_size"] == yaml.safe_load(TOY_CONFIG.read_text())["configurations"]["metastasis_only"][
        "plans_overrides"]["patch_size"]  # the final patch, cut from the larger initial one
    q, r = measured[0]["fraction"], measured[1]["fraction"]
    assert q < 0.1 and r > 0.8, measured  # random centres rarely hit a metastasis, forced ones mostly stay on it

    def expected(p):
        return p * r + (1 - p) * q

    def tolerance(p, n=600):
        return 4 * math.sqrt(expected(p) * (1 - expected(p)) / n)

    for share, m in zip([0.5, 0.75], measured[2:]):
        assert abs(m["fraction"] - expected(share)) < tolerance(share), (share, m, q, r)
    # The template's share and the default's differ by more than both tolerances: ignoring the setting fails.
    assert expected(0.75) - expected(0.5) > tolerance(0.75) + tolerance(0.5), (q, r)


def test_meshes_of_the_new_cases_match_their_segmentations(smoke_run):
    """prediction.meshes (on in the toy config): one STL per class present in each new case's refined
    segmentation, closed, with the voxels' volume (within 5 %)."""
    import trimesh

    for case in ("toy_100", "toy_101", "toy_102"):
        seg = sitk.ReadImage(str(smoke_run / f"results/predictions/test/refined/{case}.nii.gz"))
        labels = sitk.GetArrayFromImage(seg)
        present = {name for name, value in (("primary", 1), ("metastasis", 2)) if (labels == value).any()}
        assert {p.stem for p in (smoke_run / f"results/meshes/{case}").glob("*.stl")} == present
        for name in present:
            mesh = trimesh.load(smoke_run / f"results/meshes/{case}/{name}.stl")
            voxels = (labels == {"primary": 1, "metastasis": 2}[name]).sum() * np.prod(seg.GetSpacing())
            assert mesh.is_watertight and abs(mesh.volume - voxels) / voxels < 0.05, (case, name)


def test_tumour_burden_of_the_new_cases(smoke_run):
    burden = pd.read_csv(smoke_run / "results/burden/test/burden.tsv", sep="\t").set_index("case")
    lesions = pd.read_csv(smoke_run / "results/burden/test/lesions.tsv", sep="\t")
    metrics = pd.read_csv(smoke_run / "results/metrics/test/refined.tsv", sep="\t")
    for name in ("primary", "metastasis"):  # the evaluation measured the same masks' volumes
        predicted = metrics[metrics["class"] == name].set_index("case")["predicted_ml"]
        np.testing.assert_allclose(burden.loc[predicted.index, f"{name}_ml"], predicted, rtol=1e-4, atol=1e-6)
        counts = lesions[lesions["class"] == name].groupby("case").size()
        assert (burden[f"{name}_lesions"] == counts.reindex(burden.index, fill_value=0)).all()
    from workflow_scripts.toy_data import ANATOMY_IDS

    assert set(lesions["structure"]) <= {"none", *ANATOMY_IDS}  # the toy anatomy's structures, by name


def test_a_study_in_odd_folders_gives_what_plain_folders_give(smoke_run, tmp_path):
    """The smoke study's data (a DICOM series among the training and the new cases) and its study folder under a
    name as users have them: QC, DICOM conversion, the splits and one configuration's nnU-Net plans run there and
    equal the smoke run's, made in plain folders."""
    study = odd_folder_study(smoke_run / "resources/toy", tmp_path / ODD_NAME)
    plans = "results/datasets/resenc_multiclass/plans_summary.json"
    snakemake(study, "results/qc/passing_cases.json", plans, "--cores", "2", "--configfile", "study.yaml")
    preprocessed = "results/nnunet/nnUNet_preprocessed/Dataset501_resenc_multiclass"
    for name in ("results/qc/qc_table.tsv", "results/qc/dataset_summary.tsv", "results/qc/passing_cases.json",
                 "results/splits/splits_final.json", f"{preprocessed}/nnUNetResEncUNetMPlans.json",
                 f"{preprocessed}/dataset_fingerprint.json", f"{preprocessed}/splits_final.json"):
        assert (study / name).read_bytes() == (smoke_run / name).read_bytes(), name
    ours, plain = (json.loads((root / plans).read_text()) for root in (study, smoke_run))
    for key in ("preprocessed_folder", "plans_file"):  # absolute paths: each study's own folder
        assert ours.pop(key) == plain.pop(key).replace(str(smoke_run), str(study))
    assert ours == plain
    dicom_cases = [p.name for folder in ("imagesTr", "imagesTs") for p in (study / "../data" / folder).iterdir()
                   if p.is_dir()]
    assert len(dicom_cases) == 2
    for converted in [f"results/inputs/{s}/{c}.nii.gz" for s in ("train", "test") for c in dicom_cases]:
        if (smoke_run / converted).exists():
            a, b = (sitk.ReadImage(str(root / converted)) for root in (study, smoke_run))
            assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)), converted
            assert (a.GetOrigin(), a.GetSpacing(), a.GetDirection()) == (b.GetOrigin(), b.GetSpacing(),
                                                                         b.GetDirection())
            dicom_cases.remove(Path(converted).name[: -len(".nii.gz")])
    assert not dicom_cases  # both series were converted and compared


def test_an_exported_bundle_segments_new_scans_as_the_study_did(smoke_run, tmp_path):
    """export_bundle, the bundle copied to another folder, then a batch folder holding only two new scans (one
    NIfTI, one DICOM series) and a config naming the bundle; the bundle, the batch folder and the scans' folder
    named as users name folders (ODD_NAME): nothing is trained, the refined label maps equal the study's (made in
    plain folders) for the same images, on the input grid, and the burden table lists both scans."""
    snakemake(smoke_run, "export_bundle", "--cores", "1", "--configfile", TOY_CONFIG)
    bundle = tmp_path / ODD_NAME / "bundle"
    shutil.copytree(smoke_run / "results/bundle", bundle)
    manifest = json.loads((bundle / "bundle.json").read_text())
    selected = json.loads((smoke_run / "results/ensemble/selected.json").read_text())
    assert set(manifest["configurations"]) == set(selected["members"]) | {f["configuration"] for f in
                                                                          selected["fusions"]}
    # Tensors only, and the card from the study's own tables (one DICOM training case, made by the toy's maker).
    assert manifest["format"] == 2 and not [p for p in bundle.rglob("*") if p.suffix == ".pth"]
    card = manifest["model_card"]
    passing = json.loads((smoke_run / "results/qc/passing_cases.json").read_text())
    assert card["training_data"]["cases"] == len(passing["train"]) and card["training_data"]["dicom_cases"] == 1
    assert card["training_data"]["scanner_makers"] == ["Toy phantom maker"]
    assert card["cross_validation"][0]["stage"] == "oof_nested" and "## Cross-validation" in (
        bundle / "MODEL_CARD.md").read_text()
    batch = tmp_path / ODD_NAME / "batch"
    scans = tmp_path / ODD_NAME / "new scans"
    toy = smoke_run / "resources/toy"
    scans.mkdir(parents=True)
    shutil.copyfile(toy / "imagesTs/toy_100.nii.gz", scans / "scan_a.nii.gz")
    shutil.copytree(toy / "imagesTs/toy_102", scans / "scan_b")
    (batch / "anatomy").mkdir(parents=True)
    for new, old in (("scan_a", "toy_100"), ("scan_b", "toy_102")):
        shutil.copyfile(toy / f"anatomy/{old}.nii.gz", batch / f"anatomy/{new}.nii.gz")
    (batch / "predict.yaml").write_text(yaml.safe_dump({
        "bundle": str(bundle), "data": {"images_ts": str(scans)},
        "anatomy": {"source": "precomputed", "precomputed_dir": "anatomy"}, "compute": {"device": "cpu"}},
        allow_unicode=True))
    snakemake(batch, "--profile", PROFILES["local"], "--configfile", "predict.yaml", "--cores", "2", timeout=1200)
    assert not list(batch.rglob("*.pth")) and not (batch / "results/training").exists()  # nothing trained here
    for new, old, image in (("scan_a", "toy_100", scans / "scan_a.nii.gz"),
                            ("scan_b", "toy_102", batch / "results/inputs/test/scan_b.nii.gz")):
        ours = sitk.ReadImage(str(batch / f"results/predictions/test/refined/{new}.nii.gz"))
        study = sitk.ReadImage(str(smoke_run / f"results/predictions/test/refined/{old}.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(study)), new
        scan = sitk.ReadImage(str(batch / image))
        assert ours.GetSize() == scan.GetSize() and ours.GetOrigin() == scan.GetOrigin()
        assert ours.GetSpacing() == scan.GetSpacing() and ours.GetDirection() == scan.GetDirection()
    burden = pd.read_csv(batch / "results/burden/test/burden.tsv", sep="\t")
    assert sorted(burden["case"]) == ["scan_a", "scan_b"]
    log = "".join(p.read_text() for p in (batch / "logs/predict_test").glob("*.log"))
    for name in manifest["configurations"]:
        assert f"model files of {name} match the manifest" in log
    qc = pd.read_csv(batch / "results/qc/qc_table.tsv", sep="\t")
    assert sorted(qc["case"].unique()) == ["scan_a", "scan_b"] and set(qc["severity"]) == {"info"}


def test_new_cases_in_parts_give_what_one_job_gives(smoke_run, tmp_path):
    """The toy study predicts its 3 new cases in prediction.parts: 2 jobs; the predict verb run once on all 3
    with the same models, ensemble and settings writes the same label maps and probabilities."""
    config = yaml.safe_load(TOY_CONFIG.read_text())
    assert config["prediction"]["parts"] == 2
    assert sorted(p.name for p in (smoke_run / "results/predictions/test_parts").iterdir()) == ["0", "1"]
    names = list(config["configurations"])
    summaries = {n: [str(smoke_run / f"results/training/{n}/fold_{k}.json") for k in range(5)] for n in names}
    cases = ["toy_100", "toy_101", "toy_102"]
    run([sys.executable, "-m", "workflow_scripts", "predict", "--nnunet-root", "results/nnunet", "--threads", "2",
         "--training-summaries", json.dumps(summaries), "--configurations", *names,
         "--selection", "results/ensemble/selected.json",
         "--settings", json.dumps({"configurations": config["configurations"], "prediction": config["prediction"],
                                   "compute": {"device": "cpu"}}),
         "--images", *[f"results/inputs/test/{c}.nii.gz" for c in cases], "--out-dir", tmp_path / "one_job"],
        cwd=smoke_run)
    for stage in names + ["ensemble"]:
        for case in cases:
            study = smoke_run / f"results/predictions/test/{stage}/{case}"
            assert (study.parent / f"{case}.nii.gz").is_symlink()  # linked from its part's folder
            ours = tmp_path / f"one_job/{stage}/{case}"
            assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(f"{study}.nii.gz")),
                                  sitk.GetArrayFromImage(sitk.ReadImage(f"{ours}.nii.gz"))), (stage, case)
            with np.load(f"{study}.npz") as a, np.load(f"{ours}.npz") as b:
                assert all(np.array_equal(a[k], b[k]) for k in a.files), (stage, case)


def test_speed_options_of_new_case_prediction_agree_with_the_study(smoke_run, tmp_path):
    """The predict verb with torch resampling at export and a one-member ensemble without kept probabilities
    (every configuration reduced by argmax on its logits, no .npz written) gives the study's label maps, which
    were made with nnU-Net's resampling and probabilities, up to resampling differences at object borders."""
    names = ["resenc_multiclass", "isotropic_multiclass"]
    selection = tmp_path / "selected.json"
    selection.write_text(json.dumps({"candidate": "resenc_multiclass", "members": {names[0]: 1.0}, "fusions": []}))
    summaries = {n: [str(smoke_run / f"results/training/{n}/fold_{k}.json") for k in range(5)] for n in names}
    config = yaml.safe_load(TOY_CONFIG.read_text())
    step = config["prediction"]["tile_step_size"]  # as the study predicted
    settings = {"tile_step_size": step, "use_mirroring": False, "half_precision": True, "export_resampling": "torch",
                "save_probabilities": False}
    cases = ["toy_100"]  # 10 models on one case: a minute and a half on 2 cores
    result = run([sys.executable, "-m", "workflow_scripts", "predict", "--nnunet-root", "results/nnunet",
                  "--threads", "2", "--training-summaries", json.dumps(summaries), "--configurations", *names,
                  "--selection", selection, "--settings",
                  json.dumps({"configurations": {n: config["configurations"][n] for n in names},
                              "prediction": settings, "compute": {"device": "cpu"}}),
                  "--images", *[f"results/inputs/test/{c}.nii.gz" for c in cases], "--outputs",
                  *[tmp_path / "out" / stage / f"{c}.nii.gz" for stage in names + ["ensemble"] for c in cases]],
                 cwd=smoke_run)
    assert "[1/1] toy_100" in result.stdout
    assert not list((tmp_path / "out").rglob("*.npz"))
    for case in cases:
        ensemble = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"out/ensemble/{case}.nii.gz")))
        for name in names:
            ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"out/{name}/{case}.nii.gz")))
            study = sitk.GetArrayFromImage(sitk.ReadImage(
                str(smoke_run / f"results/predictions/test/{name}/{case}.nii.gz")))
            assert (ours == study).mean() > 0.995, (case, name)
            for label in {1, 2} & set(np.unique(study)):
                both = ((ours == label) & (study == label)).sum()
                assert 2 * both / max(1, (ours == label).sum() + (study == label).sum()) > 0.9, (case, name, label)
        assert np.array_equal(ensemble, sitk.GetArrayFromImage(sitk.ReadImage(
            str(tmp_path / f"out/{names[0]}/{case}.nii.gz"))))


def test_plain_nnunet_predict_works_on_the_results(smoke_run, tmp_path):
    """The results folders stay standard nnU-Net: nnUNetv2_predict reproduces the workflow's prediction."""
    (tmp_path / "in").mkdir()
    os.symlink(smoke_run / "resources/toy/imagesTs/toy_100.nii.gz", tmp_path / "in" / "toy_100_0000.nii.gz")
    nnunet = smoke_run / "results" / "nnunet"
    env = dict(os.environ, nnUNet_raw=str(nnunet / "nnUNet_raw"), nnUNet_results=str(nnunet / "nnUNet_results"),
               nnUNet_preprocessed=str(nnunet / "nnUNet_preprocessed"))
    config = yaml.safe_load(TOY_CONFIG.read_text())
    assert not config["prediction"]["use_mirroring"]  # as the study predicted: no test-time mirroring
    result = subprocess.run(
        [str(Path(sys.executable).parent / "nnUNetv2_predict"), "-i", str(tmp_path / "in"), "-o",
         str(tmp_path / "out"), "-d", "501", "-c", "3d_fullres", "-tr",
         config["configurations"]["resenc_multiclass"]["trainer"], "-p", "nnUNetResEncUNetMPlans",
         "-f", "0", "1", "2", "3", "4", "-device", "cpu", "-npp", "1", "-nps", "1",
         "-step_size", str(config["prediction"]["tile_step_size"]), "--disable_tta",
         "--disable_progress_bar"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "toy_100.nii.gz")))
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(smoke_run / "results/predictions/test/resenc_multiclass/toy_100.nii.gz")))
    assert (theirs == ours).mean() > 0.999
    assert (theirs == 1).sum() > 0


def test_a_fold_the_chaos_run_resumed_equals_its_uninterrupted_training(smoke_run, resumed_fold_twin):
    """The chaos run's training kill caught a fold between its checkpoints, and the fold went on from its latest
    one. Trained again from scratch and never stopped (the same preprocessed data, settings, seed and threads), it
    ends with the same weights and writes the same validation probabilities: every file downstream of the fold is
    what the uninterrupted study writes. Last in this file: the twin trains in the background meanwhile."""
    assert resumed_fold_twin is not None, json.loads((smoke_run / "chaos.json").read_text())["kills"]
    fold_dir = resumed_fold_twin.fold_dir
    chaos_summary = json.loads((smoke_run / f"results/training/{resumed_fold_twin.configuration}/"
                                f"fold_{resumed_fold_twin.fold}.json").read_text())
    assert chaos_summary["resumed_from"].startswith("epoch "), chaos_summary
    twin = resumed_fold_twin.wait()
    assert json.loads(resumed_fold_twin.summary.read_text())["resumed_from"] is None
    assert weights_digest(twin / "checkpoint_final.pth") == weights_digest(fold_dir / "checkpoint_final.pth")
    assert same_probabilities(validation_probabilities(twin), validation_probabilities(fold_dir))
