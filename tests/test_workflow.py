"""The workflow as a user runs it: trainer lookup, lint, dry runs per rule and profile, and the toy smoke DAG."""
import itertools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

REPO = Path(__file__).resolve().parent.parent
TOY_CONFIG = REPO / "config" / "toy.yaml"
PROFILES = {"local": REPO / "profiles" / "local", "slurm": REPO / "profiles" / "slurm"}
# A folder name as users have them: a space, a single quote, brackets, `$HOME` literally, non-ASCII letters.
ODD_NAME = "Patienten (2024) d'été $HOME [données]"


def run(args, cwd, timeout=3000, check=True):
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # rules call this env's python
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return result


def snakemake(workdir, *args, check=True, timeout=3000):
    return run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
                *map(str, args)], cwd=workdir, check=check, timeout=timeout)


@pytest.fixture(scope="module")
def toy_workdir(tmp_path_factory):
    """A fresh working directory holding only the toy data, as after the README's first step."""
    workdir = tmp_path_factory.mktemp("workdir")
    run([sys.executable, "-m", "workflow_scripts", "make-toy-data", "--out", "resources/toy"], cwd=workdir)
    return workdir


def test_nnunet_finds_trainers_by_name():
    """nnU-Net imports every trainer module (timm -> torchvision) to find a class: torch and torchvision match."""
    code = ("from workflow_scripts.nnunet_seam import find_trainer_class\n"
            "for name in ('nnUNetTrainer', 'nnUNetTrainerNoMirroring', 'nnUNetTrainer_5epochs',\n"
            "             'nnUNetTrainerAdam'):\n"
            "    print(find_trainer_class(name).__name__)\n")
    result = run([sys.executable, "-c", code], cwd=REPO)
    assert result.stdout.split() == ["nnUNetTrainer", "nnUNetTrainerNoMirroring", "nnUNetTrainer_5epochs",
                                     "nnUNetTrainerAdam"]


def test_snakefile_and_rules_are_snakefmt_formatted():
    """snakefmt's layout (pyproject.toml: line length 120); `snakefmt Snakefile rules` applies it."""
    result = run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules"], cwd=REPO, check=False)
    assert result.returncode == 0, f"run `snakefmt Snakefile rules`:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"


def test_lint_is_clean(toy_workdir):
    result = snakemake(toy_workdir, "--lint", "--configfile", TOY_CONFIG)
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def job_count(dry_run_output, rule):
    """The count of a rule's jobs in the 'Job stats' table of a dry run (0 when absent)."""
    match = re.search(rf"^{rule}\s+(\d+)\s*$", dry_run_output, re.MULTILINE)
    return int(match.group(1)) if match else 0


def list_rules(workdir):
    result = snakemake(workdir, "--list-rules", "--configfile", TOY_CONFIG)
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("profile", ["local", "slurm"])
def test_dry_run_default_target_and_every_rule(toy_workdir, profile):
    rules = list_rules(toy_workdir)
    assert {"qc_case", "make_splits", "plan_and_preprocess", "train_fold", "predict_test", "ensemble_case",
            "refine_case", "evaluate_stage", "summarize_metrics"} <= set(rules)
    result = snakemake(toy_workdir, "-n", "--profile", PROFILES[profile], "--configfile", TOY_CONFIG)
    assert job_count(result.stdout, "train_fold") == 15, result.stdout[-3000:]
    result = snakemake(toy_workdir, "-n", "export_bundle", "--profile", PROFILES[profile], "--configfile", TOY_CONFIG)
    assert job_count(result.stdout, "export_bundle") == 1 and job_count(result.stdout, "train_fold") == 15
    # segment_anatomy: precomputed maps here (next test); crop_case: crop is off here (test_crop_option_...)
    planned = [rule for rule in rules if rule not in ("all", "segment_anatomy", "export_bundle", "crop_case")]

    def dry_run_until(rule):
        return snakemake(toy_workdir, "-n", "--profile", PROFILES[profile], "--configfile", TOY_CONFIG,
                         "--until", rule).stdout

    with ThreadPoolExecutor(max_workers=2) as pool:  # one Snakemake process per core
        for rule, stdout in zip(planned, pool.map(dry_run_until, planned)):
            assert job_count(stdout, rule) > 0, f"--until {rule} plans no {rule} job:\n{stdout[-2000:]}"


def test_dry_run_with_totalsegmentator_anatomy(toy_workdir, tmp_path):
    config = yaml.safe_load(TOY_CONFIG.read_text())
    config["anatomy"] = {"source": "totalsegmentator", "totalseg_home": "totalseg_home", "task": "total"}
    config["compute"]["resources"]["segment_anatomy"] = {"threads": 1, "mem_mb": 8000, "runtime": 30, "gpu": True}
    path = tmp_path / "totalseg.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(toy_workdir, "-n", "--profile", PROFILES["slurm"], "--configfile", path,
                       "--until", "segment_anatomy")
    assert job_count(result.stdout, "segment_anatomy") == 15
    assert "gpu=1" in result.stdout


@pytest.mark.smoke  # runs a TotalSegmentator model
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
    assert (workdir / "benchmarks/segment_anatomy/toy_001.tsv").exists()
    # Anatomy-aware label QC through its rule on that map: the tiny model calls every voxel vertebra L3, so the
    # label lies in bone (flagged), and no flip or shift can help (nothing proposed).
    snakemake(workdir, "results/qc/anatomy/toy_001.tsv", "--cores", "1", "--configfile", path)
    table = pd.read_csv(workdir / "results/qc/anatomy/toy_001.tsv", sep="\t")
    flagged = table[table["check"] == "label_anatomy"]
    assert flagged["message"].str.contains(r"100% of it lies inside \['vertebrae_\*'", regex=True).any()
    assert set(flagged["severity"]) == {"warning", "info"}  # the lung rule: no lung in this map, not checked
    assert table[table["check"] == "label_anatomy_proposal"]["message"].str.startswith("no flip or shift").all()
    assert not (workdir / "results/qc/anatomy/toy_001_proposal/label.nii.gz").exists()


def odd_folder_study(toy_dir: Path, root: Path) -> Path:
    """The toy config in a study folder under ``root``, its data folders (DICOM series included) copied under
    ``root`` too; ``root`` is named as users name folders (ODD_NAME)."""
    data = root / "data"
    shutil.copytree(toy_dir, data, symlinks=True)
    config = yaml.safe_load(TOY_CONFIG.read_text())
    for key, folder in (("images_tr", "imagesTr"), ("labels_tr", "labelsTr"), ("images_ts", "imagesTs"),
                        ("labels_ts", "labelsTs")):
        config["data"][key] = str(data / folder)
    config["anatomy"]["precomputed_dir"] = str(data / "anatomy")
    study = root / "study"
    study.mkdir()
    (study / "study.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    return study


def test_every_command_takes_each_path_in_an_odd_folder_as_one_argument(toy_workdir, tmp_path):
    """The whole study's dry run with the data and the study folder named as users name folders: every job's
    shell command splits into the arguments the verb expects, each path whole (rules/ quote every placeholder,
    tested in test_package.py; this checks what Snakemake pastes in)."""
    study = odd_folder_study(toy_workdir / "resources/toy", tmp_path / ODD_NAME)
    result = snakemake(study, "-n", "-p", "--forceall", "--configfile", "study.yaml")
    commands = [line.split("Shell command: ", 1)[1] for line in result.stdout.splitlines()
                if line.startswith("Shell command: ")]
    verbs, odd_paths = set(), []
    for command in commands:
        words = shlex.split(command.split(" > ")[0]) if "python -m workflow_scripts" in command else []
        if words:
            verbs.add(words[3])
            data_paths = [w for w in words if "data/" in w]
            assert all(w.startswith(str(tmp_path / ODD_NAME / "data") + "/") for w in data_paths), command
            odd_paths += [w for w in words if ODD_NAME in w]
    # every rule that runs a verb was seen, and the verbs that read the data were handed its paths whole
    assert {"qc-case", "convert-dicom", "convert-dataset", "train-fold", "gather-oof", "predict", "score-ensembles",
            "refine-case", "evaluate-stage", "summarize-runtime"} <= verbs
    assert len(odd_paths) >= 20 and all(Path(p).exists() for p in odd_paths)
    links = [c for c in commands if c.startswith("ln -sfn")]
    assert links
    for link in links:  # the shell hands ln the image's real path and the link as two arguments
        printed = subprocess.run(["bash", "-c", link.split(" > ")[0].replace("ln -sfn", "printf '%s\\n'", 1)],
                                 capture_output=True, text=True, check=True).stdout.splitlines()
        assert len(printed) == 2 and Path(printed[0]).is_file() and ODD_NAME in printed[0], link


def test_config_error_stops_with_one_clear_message(toy_workdir, tmp_path):
    config = yaml.safe_load(TOY_CONFIG.read_text())
    config["configurations"]["resenc_multiclass"]["trainr"] = "nnUNetTrainer"
    config["data"]["labels_tr"] = "nowhere/labelsTr"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(toy_workdir, "-n", "--configfile", path, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "invalid configuration (see config/README.md)" in output
    assert "configurations.resenc_multiclass: unknown key" in output and "'trainr' was unexpected" in output
    config["configurations"]["resenc_multiclass"].pop("trainr")
    path.write_text(yaml.safe_dump(config))
    result = snakemake(toy_workdir, "-n", "--configfile", path, check=False)
    assert result.returncode != 0
    assert "data.labels_tr: folder 'nowhere/labelsTr' does not exist" in result.stdout + result.stderr


@pytest.mark.smoke  # plans and preprocesses three nnU-Net datasets
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


def break_inputs(root: Path) -> dict[str, str]:
    """A catalogue of broken inputs, each kind in its own case and voxels: {case: what QC must say}."""
    images, labels = root / "imagesTr", root / "labelsTr"

    def edit(path, change, out=None):
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
        changed = change(array)
        result = sitk.GetImageFromArray(changed if changed is not None else array)
        result.CopyInformation(image)
        sitk.WriteImage(result, str(out or path))

    (labels / "toy_001.nii.gz").unlink()
    edit(labels / "toy_002.nii.gz", lambda a: a.__setitem__((0, 0, 0), 7))
    for folder in (images, labels):
        (folder / "toy_004.nii.gz").rename(folder / "toy 4.nii.gz")
    data = (images / "toy_005.nii.gz").read_bytes()
    (images / "toy_005.nii.gz").write_bytes(data[: len(data) // 2])
    volume = sitk.ReadImage(str(images / "toy_006.nii.gz"))
    sitk.WriteImage(sitk.JoinSeries([volume, volume]), str(images / "toy_006.nii.gz"))
    label = sitk.ReadImage(str(labels / "toy_007.nii.gz"))
    label.SetOrigin(tuple(o + 5.0 for o in label.GetOrigin()))
    sitk.WriteImage(label, str(labels / "toy_007.nii.gz"))
    for folder in (images, labels):
        shutil.copyfile(folder / "toy_008.nii.gz", folder / "toy_009.nii.gz")
    edit(images / "toy_010.nii.gz", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, np.nan,
                                                         a.astype(np.float32)))
    (images / "toy_003.nii.gz").rename(images / "toy_003_0000.nii.gz")  # nnU-Net's raw layout
    (root / "labelsTs" / "toy_101.nii.gz").unlink()
    (root / "anatomy" / "toy_011.nii.gz").unlink()  # a DICOM case's precomputed anatomy map
    return {"toy_001": "[label_exists] no label", "toy_002": "[label_values] label values [7]",
            "toy 4": "[case_name]", "toy_005": "[image_readable] cannot read", "toy_006": "4D with 2 volumes",
            "toy_007": "[label_grid]", "toy_008": "[duplicate_image] same voxels and geometry as toy_009",
            "toy_009": "[duplicate_image]", "toy_010": "[image_finite]",
            "toy_003_0000": "nnU-Net's channel suffix, and the label is toy_003.nii.gz",
            "toy_011": "[anatomy_exists] no anatomy map",
            "toy_101": "[label_exists] no label"}


def test_plain_study_command_lists_every_broken_input_and_keeps_the_qc_table(toy_workdir, tmp_path):
    """The study command itself, on a catalogue of broken inputs: the DAG builds (nothing fails before QC), QC
    names every case with its problem and no traceback reaches the output or a log, the QC table, summary and
    figure stay after the stop, and the config lines the message suggests let the run go on."""
    shutil.copytree(toy_workdir / "resources", tmp_path / "resources", symlinks=True)
    expected = break_inputs(tmp_path / "resources" / "toy")
    config = yaml.safe_load(TOY_CONFIG.read_text())
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake(tmp_path, "--profile", PROFILES["local"], "--configfile", "study.yaml", check=False)
    assert result.returncode != 0
    stop = result.stderr[result.stderr.index("QC found errors"):]
    for case, message in expected.items():
        assert any(line.startswith(f"  {case}: ") and message in line for line in stop.splitlines()), case
    assert f"QC found errors in {len(expected)} case(s)" in stop
    logs = [p.read_text() for p in (tmp_path / "logs").rglob("*.log")]
    assert "Traceback" not in result.stderr + result.stdout and not [log for log in logs if "Traceback" in log]
    for kept in ("qc_table.tsv", "dataset_summary.tsv", "dataset.png"):
        assert (tmp_path / "results/qc" / kept).stat().st_size > 0, kept
    table = pd.read_csv(tmp_path / "results/qc/qc_table.tsv", sep="\t")
    assert set(expected) <= set(table.loc[table["severity"] == "error", "case"])
    assert "label_without_image" in set(table["check"])  # toy_003's label, its image named toy_003_0000
    assert not (tmp_path / "results/qc/passing_cases.json").exists()
    # Every suggestion is accepted by the config and lets QC pass; the whole DAG then builds.
    tail = stop[stop.index("\nqc:\n") + 1:].splitlines()
    snippet = tail[:1] + list(itertools.takewhile(lambda line: line.startswith("  "), tail[1:]))
    suggested = yaml.safe_load("\n".join(snippet))["qc"]
    assert set(suggested["allow"]) == {"toy_008", "toy_009"}
    assert set(suggested["exclude"]) == set(expected) - {"toy_008", "toy_009"}
    config["qc"] = {**config.get("qc", {}), **suggested}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake(tmp_path, "results/qc/passing_cases.json", "--profile", PROFILES["local"], "--configfile", "study.yaml")
    passing = json.loads((tmp_path / "results/qc/passing_cases.json").read_text())
    assert not set(passing["train"] + passing["test"]) & set(suggested["exclude"])
    plan = snakemake(tmp_path, "-n", "--configfile", "study.yaml").stdout
    assert job_count(plan, "gather_oof") == len(passing["train"])


def test_nnunet_raw_dataset_folder_is_an_input(tmp_path):
    """data.nnunet_raw takes nnU-Net's raw layout as it is (imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz,
    imagesTs, dataset.json): the cases lose the channel suffix, dataset.json's labels are checked against the
    config's, and a second channel is named in QC's message."""
    from workflow_scripts.toy_data import generate_toy_dataset

    toy = tmp_path / "toy"
    cases = generate_toy_dataset(toy, n_train=6, n_test=2, seed=0)
    raw = tmp_path / "nnUNet_raw" / "Dataset900_toy"
    for folder, source, split in (("imagesTr", "imagesTr", "train"), ("imagesTs", "imagesTs", "test")):
        (raw / folder).mkdir(parents=True)
        for case in cases[split]:
            shutil.copyfile(toy / source / f"{case}.nii.gz", raw / folder / f"{case}_0000.nii.gz")
    shutil.copytree(toy / "labelsTr", raw / "labelsTr")
    labels = {"background": 0, "primary": 1, "metastasis": 2}
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels,
                                                  "numTraining": 6, "file_ending": ".nii.gz"}))
    shutil.copyfile(raw / "imagesTr" / f"{cases['train'][0]}_0000.nii.gz", raw / "imagesTr" / "toy_000_0001.nii.gz")
    config = yaml.safe_load(TOY_CONFIG.read_text())
    config["data"] = {"nnunet_raw": str(raw), "labels_ts": str(toy / "labelsTs")}
    config["anatomy"]["precomputed_dir"] = str(toy / "anatomy")
    (tmp_path / "raw.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake(tmp_path, "results/qc/passing_cases.json", "--cores", "2", "--configfile", "raw.yaml",
                       check=False)
    assert result.returncode != 0 and "QC found errors in 1 case(s)" in result.stderr
    assert "toy_000_0001.nii.gz: the name does not end in data.channel_suffix '_0000' (a second channel?" in result.stderr
    (raw / "imagesTr" / "toy_000_0001.nii.gz").unlink()
    snakemake(tmp_path, "results/qc/passing_cases.json", "--cores", "2", "--configfile", "raw.yaml")
    passing = json.loads((tmp_path / "results/qc/passing_cases.json").read_text())
    assert passing["train"] == cases["train"] and passing["test"] == cases["test"]
    assert (tmp_path / f"results/inputs/train/{cases['train'][0]}.nii.gz").resolve() == \
        (raw / "imagesTr" / f"{cases['train'][0]}_0000.nii.gz").resolve()
    plan = snakemake(tmp_path, "-n", "--configfile", "raw.yaml").stdout
    assert job_count(plan, "gather_oof") == 6 and job_count(plan, "refine_case") == 6 + 2
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT", "1": "PET"},
                                                  "labels": {**labels, "metastasis": 3}, "file_ending": ".nii.gz"}))
    result = snakemake(tmp_path, "-n", "--configfile", "raw.yaml", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    assert "dataset.json's labels" in output and "differ from labels" in output
    assert "this workflow takes one CT channel" in output


# ----------------------------------------------------------------------------------------------------------
# The smoke DAG: every stage of the real workflow on the toy data, then the report.

@pytest.fixture(scope="module")
def smoke_run(toy_workdir):
    snakemake(toy_workdir, "--profile", PROFILES["local"], "--configfile", TOY_CONFIG, "--cores", "2",
              timeout=2400)
    snakemake(toy_workdir, "--configfile", TOY_CONFIG, "--report", "report.html", timeout=600)
    return toy_workdir


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


@pytest.mark.browser
def test_report_pages_and_figures_load_in_headless_chromium(smoke_run):
    from report_browser import chromium_path, walk_report

    executable = chromium_path()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: .ci/run installs Debian's chromium package")
        pytest.skip("no Chromium here (apt-get install chromium); CI installs it")
    checked = walk_report(smoke_run / "report.html", executable)
    assert checked["errors"] == [], checked["errors"]
    results = checked["results"]
    for expected in ("results/qc/qc_table.tsv", "results/metrics/summary.tsv", "results/metrics/comparisons.tsv",
                     "results/metrics/pinkcc.tsv", "results/metrics/worst_cases.tsv", "results/metrics/metrics.png",
                     "results/runtime/runtime.png", "results/training/resenc_multiclass/fold_0_progress.png",
                     "results/metrics/test/refined.tsv", "results/ensemble/candidates.tsv",
                     "results/refinement/rule_subsets.tsv", "results/burden/test/burden.tsv",
                     "results/qc/dataset_summary.tsv", "results/qc/dataset.png"):
        assert expected in results, expected
    figures = [path for path, mime in results.items() if mime == "image/png"]
    assert sorted(checked["figures"]) == sorted(figures) and len(figures) >= 18  # 15 folds, QC, metrics, runtime
    assert {"Quality control / Other", "Metrics / Summary", "Runtime / Other", "Cases / New cases",
            "Cases / Worst out-of-fold cases"} <= set(checked["pages"])
    # One overlay per new case, the worst out-of-fold cases, every configuration's folds overlaid, the anatomy
    # QC figure: all opened in the browser (every PNG decoded).
    for case in ("toy_100", "toy_101", "toy_102"):
        assert f"results/overlays/test/{case}.png" in checked["figures"]
    worst = pd.read_csv(smoke_run / "results/metrics/worst_cases.tsv", sep="\t")
    worst = worst[(worst["split"] == "oof") & (worst["stage"] == "refined")]
    drawn = {p for p in checked["figures"] if p.startswith("results/overlays/oof_worst/")}
    assert drawn == {f"results/overlays/oof_worst/{r['case']}_{r['class']}.png" for _, r in worst.iterrows()}
    assert len(drawn) >= 2
    for name in ("resenc_multiclass", "isotropic_multiclass", "metastasis_only"):
        assert f"results/training/{name}/folds.png" in checked["figures"]
    assert "results/qc/flagged_labels.png" in checked["figures"]


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


def test_metric_tables_of_the_smoke_run(smoke_run):
    metrics = smoke_run / "results/metrics"
    pinkcc = pd.read_csv(metrics / "pinkcc.tsv", sep="\t").set_index(["split", "stage"])
    assert 0.0 < pinkcc.loc[("test", "ensemble"), "pinkcc_score"] <= 1.0
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
    assert candidates["score"].max() == pytest.approx(selected["score"], abs=1e-5)
    assert pinkcc[("oof", "ensemble")] == pytest.approx(selected["score"], abs=1e-3)
    for single in ("resenc_multiclass", "isotropic_multiclass"):  # a lone member is that configuration
        assert candidates.loc[single, "score"] == pytest.approx(pinkcc[("oof", single)], abs=1e-3)
    rules = json.loads((smoke_run / "results/refinement/selected_rules.json").read_text())
    assert rules["apply"] == "if_improves" and rules["score_with"] >= rules["score_without"]
    assert rules["score_without"] == pytest.approx(pinkcc[("oof", "ensemble")], abs=1e-3)
    assert pinkcc[("oof", "refined")] == pytest.approx(rules["score_with"], abs=1e-3)
    subsets = pd.read_csv(smoke_run / "results/refinement/rule_subsets.tsv", sep="\t")
    assert len(subsets) == 2 ** 3 and subsets["chosen"].sum() == 1
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


# Patches cut by nnU-Net's own data loader, built from the trainer our training code makes for given settings.
OVERSAMPLING_PROBE = """
import json, sys
import numpy as np
import torch
from workflow_scripts.nnunet_seam import configure_nnunet, training_patch_loader
configure_nnunet(sys.argv[1], 1)
from workflow_scripts.training import make_trainer
for settings in map(json.loads, sys.argv[4:]):
    trainer = make_trainer(sys.argv[2], sys.argv[3], "nnUNetTrainer", 0, settings, torch.device("cpu"))
    loader = training_patch_loader(trainer)
    np.random.seed(0)
    centre = tuple(s // 2 for s in trainer.configuration_manager.patch_size)
    hits = total = 0
    for _ in range(300):
        target = loader.generate_train_batch()["target"]
        hits += int((target[(slice(None), 0, *centre)] > 0).sum())
        total += target.shape[0]
    print("RESULT", json.dumps({"fraction": hits / total, "patches": total, "batch_size": trainer.batch_size}))
"""


def test_oversampling_centres_the_configured_share_of_patches_on_lesions(smoke_run, tmp_path):
    """Fraction of 600 sampled training patches whose centre voxel is a lesion, against p + (1 - p) q, q the
    fraction without oversampling, within 4 binomial standard deviations (0.08 here). nnU-Net's default rule
    forces whole batch items: at batch size 2, p = 0.33 gives one patch of two (0.5); drawn per patch
    (probabilistic_oversampling, as the real template's metastasis_only sets it) it gives p."""
    dataset = "Dataset501_resenc_multiclass"
    root = tmp_path / "nnunet"  # a copy: the trainer writes a log under nnUNet_results
    shutil.copytree(smoke_run / "results/nnunet/nnUNet_preprocessed" / dataset, root / "nnUNet_preprocessed" / dataset)
    template = yaml.safe_load((REPO / "config/config.yaml").read_text())["configurations"]["metastasis_only"]
    metastasis_only = {k: v for k, v in template["trainer_settings"].items() if k != "save_every"}
    assert metastasis_only == {"oversample_foreground_percent": 0.5, "probabilistic_oversampling": True}
    settings = [{"oversample_foreground_percent": 0.0}, {"oversample_foreground_percent": 0.33},
                {"oversample_foreground_percent": 0.33, "probabilistic_oversampling": True}, metastasis_only]
    result = run([sys.executable, "-c", OVERSAMPLING_PROBE, root, dataset, "nnUNetResEncUNetMPlans",
                  *map(json.dumps, settings)], cwd=tmp_path)
    measured = [json.loads(line.split(" ", 1)[1]) for line in result.stdout.splitlines() if line.startswith("RESULT")]
    assert [m["batch_size"] for m in measured] == [2] * 4 and [m["patches"] for m in measured] == [600] * 4
    q = measured[0]["fraction"]
    assert 0.0 < q < 0.2, measured  # random patches rarely centre on a lesion

    def expected(p):
        return p + (1 - p) * q

    for (share, m) in zip([0.5, 0.33, 0.5], measured[1:]):  # nnU-Net's 0.33 at batch size 2 is one of two
        tolerance = 4 * math.sqrt(expected(share) * (1 - expected(share)) / m["patches"])
        assert abs(m["fraction"] - expected(share)) < tolerance, (share, m, q)
    # The two roads to "0.33" differ by more than the tolerance: the test tells them apart.
    assert measured[1]["fraction"] - measured[2]["fraction"] > 0.1, measured


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


def test_crop_option_crops_every_case_for_the_models_and_nothing_else(toy_workdir, tmp_path):
    """crop.enabled: a crop_case job per case; the datasets, the out-of-fold gathering and new-case prediction read
    the crops and their boxes; QC, anatomy, ensembles, refinement and evaluation still read the full images."""
    config = yaml.safe_load(TOY_CONFIG.read_text())
    config["crop"] = {"enabled": True, "structures": ["liver", "hip_*"], "margin_mm": 10}
    path = tmp_path / "crop.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(toy_workdir, "-n", "-p", "--profile", PROFILES["local"], "--configfile", path)
    assert job_count(result.stdout, "crop_case") == 15, result.stdout[-3000:]
    commands = [line for line in result.stdout.splitlines() if "python -m workflow_scripts" in line]
    convert = [c for c in commands if " convert-dataset " in c]
    assert len(convert) == 3 and all("--images results/crop/toy_000.nii.gz" in c and "--crop-boxes " in c
                                     and c.count("results/crop/") == 24 for c in convert)
    gather = [c for c in commands if " gather-oof " in c]
    assert len(gather) == 12 and all("--crop-box results/crop/toy_" in c for c in gather)
    predict = [c for c in commands if " predict " in c]
    assert len(predict) == 2 and all("--cropped-images results/crop/toy_1" in c and "--crop-boxes" in c
                                     for c in predict)
    others = [c for c in commands if not any(v in c for v in (" convert-dataset ", " gather-oof ", " predict ",
                                                                " crop-case "))]
    assert others and not any("results/crop" in c for c in others)


def test_probability_encoding_reaches_every_rule_that_stores_probabilities(toy_workdir, tmp_path):
    """prediction.probability_encoding: training's validation export, gather_oof and new-case prediction are told;
    the default is float16."""
    config = yaml.safe_load(TOY_CONFIG.read_text())
    config.setdefault("prediction", {})["probability_encoding"] = "uint8"
    path = tmp_path / "uint8.yaml"
    path.write_text(yaml.safe_dump(config))
    for configfile, encoding in ((TOY_CONFIG, "float16"), (path, "uint8")):
        # --forceall: the whole DAG, also where the smoke study already ran in this folder
        result = snakemake(toy_workdir, "-n", "-p", "--forceall", "--profile", PROFILES["local"],
                           "--configfile", configfile)
        commands = [line for line in result.stdout.splitlines() if "python -m workflow_scripts" in line]
        for verb, count in ((" train-fold ", 15), (" gather-oof ", 12), (" predict ", 2)):
            told = [c for c in commands if verb in c]
            setting = f'"probability_encoding":"{encoding}"'  # in each verb's --settings, the one route
            assert len(told) == count and all(setting in c for c in told), (verb, encoding, told[:1])


def test_a_fourth_configuration_is_a_config_edit(toy_workdir, tmp_path):
    config = yaml.safe_load(TOY_CONFIG.read_text())
    fourth = dict(config["configurations"]["resenc_multiclass"], dataset_id=504, planner="nnUNetPlannerResEncL")
    config["configurations"]["resenc_l_multiclass"] = fourth
    config["ensemble"]["members"]["resenc_l_multiclass"] = 0.5
    path = tmp_path / "four.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(toy_workdir, "-n", "--profile", PROFILES["local"], "--configfile", path)
    assert job_count(result.stdout, "train_fold") == 20
    assert job_count(result.stdout, "plan_and_preprocess") == 4
    assert "configuration=resenc_l_multiclass, fold=4" in result.stdout


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


# ----------------------------------------------------------------------------------------------------------
# The same toy DAG through a real single-node SLURM cluster with the SLURM profile.

SLURM_GPU_RULES = ("train_fold", "predict_test")
# The SLURM study is the toy study with a shorter training: what SLURM changes is where jobs run, not what they
# compute, and the local study already shows the learning. A checkpoint every epoch and four epochs leave the
# preemption watcher a window of three epochs between a training's first checkpoint and its final one.
SLURM_TRAINER_SETTINGS = {"num_epochs": 4, "num_iterations_per_epoch": 5, "num_val_iterations_per_epoch": 1,
                          "save_every": 1}


def slurm_jobs_by_rule(workdir):
    """SLURM job ids per rule (or group), from the job logs the plugin writes under logs/slurm/<rule or group>/."""
    jobs = {}
    for log in (workdir / "logs" / "slurm").rglob("*.log"):
        name = log.relative_to(workdir / "logs" / "slurm").parts[0]
        jobs.setdefault(name, []).append(log.stem)
    return jobs


def preempt_one_training(workdir, stop, preempted):
    """Cancel the SLURM job of the first training that has written a checkpoint but not finished, as a
    preemption would; the profile's retries must resubmit it and the new job resume from the checkpoint."""
    results = workdir / "results" / "nnunet" / "nnUNet_results"
    while not stop.is_set():
        for checkpoint in sorted(results.glob("Dataset*/*/fold_*/checkpoint_latest.pth")):
            fold_dir = checkpoint.parent
            if (fold_dir / "checkpoint_final.pth").exists():
                continue
            configuration = fold_dir.parent.parent.name.split("_", 1)[1]
            fold = fold_dir.name.split("_")[1]
            logs = list((workdir / "logs/slurm/rule_train_fold" / f"{configuration}_{fold}").glob("*.log"))
            if len(logs) == 1:
                subprocess.run(["scancel", logs[0].stem], check=True, timeout=30)
                preempted.update(configuration=configuration, fold=fold, job=logs[0].stem)
                return
        stop.wait(0.5)


@pytest.fixture(scope="module")
def slurm_run(smoke_run, tmp_path_factory):
    from slurm_cluster import SlurmCluster, missing_requirements

    reason = missing_requirements()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; .ci/run installs SLURM")
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("slurm_workdir")
    run([sys.executable, "-m", "workflow_scripts", "make-toy-data", "--out", "resources/toy"], cwd=workdir)
    config = yaml.safe_load(TOY_CONFIG.read_text())
    for rule in SLURM_GPU_RULES:  # the toy config's GPU rules ask for a (fake) GPU, as on a real cluster
        config["compute"]["resources"][rule]["gpu"] = True
    for conf in config["configurations"].values():
        conf["trainer_settings"] = {**conf["trainer_settings"], **SLURM_TRAINER_SETTINGS}
    (workdir / "slurm_toy.yaml").write_text(yaml.safe_dump(config, sort_keys=False))  # label order is meaningful
    cluster = SlurmCluster(memory_mb=16000, gpus=2)
    cluster.start()
    stop, preempted = threading.Event(), {}
    watcher = threading.Thread(target=preempt_one_training, args=(workdir, stop, preempted), daemon=True)
    watcher.start()
    try:
        # CI-only settings on the command line, not in the profile: this node's 2 cores, and quicker polling.
        result = snakemake(workdir, "--profile", PROFILES["slurm"], "--configfile", "slurm_toy.yaml", "--cores", "2",
                           "--slurm-init-seconds-before-status-checks", "5", "--seconds-between-status-checks", "5",
                           check=False, timeout=2700)
        records = cluster.job_records()
        logs = cluster.logs()
    finally:
        stop.set()
        watcher.join(timeout=30)
        cluster.stop()
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}\n{logs}"
    return {"workdir": workdir, "records": records, "preempted": preempted}


def test_slurm_jobs_ran_through_slurm_with_gpus_for_gpu_rules(slurm_run):
    workdir = slurm_run["workdir"]
    jobs = slurm_jobs_by_rule(workdir)
    records = slurm_run["records"]
    assert len(list((workdir / "logs/slurm/rule_train_fold").iterdir())) == 15  # one folder per fold
    for rule in ("rule_train_fold", "rule_predict_test", "rule_plan_and_preprocess", "rule_convert_dicom"):
        assert rule in jobs, f"no SLURM job log for {rule}: {sorted(jobs)}"
    assert any(name.startswith("group_out_of_fold") for name in jobs), sorted(jobs)  # 12 per-case gathers
    assert any(name.startswith("group_ensemble_scores") for name in jobs), sorted(jobs)  # 12 per-case scorings
    # 15 trainings, one of them submitted twice (preempted, then resubmitted).
    assert len(jobs["rule_train_fold"]) == 15 + bool(slurm_run["preempted"])
    # Per-case jobs are packed into group jobs: 15 QC cases in one SLURM job, not 15.
    assert len([name for name in jobs if name.startswith("group_qc")]) >= 1
    assert len(jobs.get("group_qc_qc_case", [])) == 1
    assert len(jobs.get("group_qc_anatomy_qc_anatomy", [])) == 1  # 15 labels checked against anatomy, one job
    preempted = slurm_run["preempted"]
    for name, ids in jobs.items():
        for job_id in ids:
            record = records.get(job_id)
            assert record is not None, f"SLURM has no record of job {job_id} ({name})"
            expected = "CANCELLED" if job_id == preempted.get("job") else "COMPLETED"
            assert record["JobState"] == expected, record
            has_gpu = "gpu:1" in record.get("TresPerJob", "")
            assert has_gpu == any(name == f"rule_{rule}" for rule in SLURM_GPU_RULES), (name, record)
    # Aggregations ran on the submit host (localrules), not as cluster jobs.
    for rule in ("qc_report", "qc_gate", "qc_anatomy_report", "make_splits", "summarize_metrics", "summarize_runtime"):
        assert f"rule_{rule}" not in jobs


def test_slurm_preempted_training_was_resubmitted_and_resumed(slurm_run):
    preempted = slurm_run["preempted"]
    assert preempted, "no training was preempted: the watcher found no running training with a checkpoint"
    workdir = slurm_run["workdir"]
    configuration, fold = preempted["configuration"], preempted["fold"]
    logs = sorted((workdir / "logs/slurm/rule_train_fold" / f"{configuration}_{fold}").glob("*.log"))
    assert len(logs) == 2 and preempted["job"] in [log.stem for log in logs]
    summary = json.loads((workdir / f"results/training/{configuration}/fold_{fold}.json").read_text())
    assert summary["resumed_from"].startswith("epoch "), summary
    assert summary["epochs"] == SLURM_TRAINER_SETTINGS["num_epochs"]


def results_files(workdir):
    """Files of the default target under results/. bundle/ is left out: only the export_bundle target (run by the
    bundle test in the local study) makes it."""
    root = workdir / "results"
    # nnU-Net names each training log after its start time (a resumed training has two): compare by folder.
    return {re.sub(r"training_log_[\d_]+\.txt$", "training_log.txt", str(p.relative_to(root)))
            for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] != "bundle"}


def test_slurm_results_match_the_local_run(slurm_run, smoke_run):
    slurm_workdir = slurm_run["workdir"]
    local, cluster = results_files(smoke_run), results_files(slurm_workdir)
    # The worst out-of-fold cases are named by each study's own scores (the SLURM study trains less): each study
    # drew exactly the rows of its own worst_cases.tsv; the rest must match file for file.
    for files, workdir in ((local, smoke_run), (cluster, slurm_workdir)):
        worst = pd.read_csv(workdir / "results/metrics/worst_cases.tsv", sep="\t")
        worst = worst[(worst["split"] == "oof") & (worst["stage"] == "refined")]
        drawn = {f for f in files if f.startswith("overlays/oof_worst/") and f.endswith(".png")}
        assert drawn == {f"overlays/oof_worst/{r['case']}_{r['class']}.png" for _, r in worst.iterrows()}
        assert len(drawn) >= 2
        files -= drawn
    assert local == cluster, f"only local: {sorted(local - cluster)}; only SLURM: {sorted(cluster - local)}"
    preprocessed = sorted(p.relative_to(smoke_run / "results") for p in
                          (smoke_run / "results/nnunet/nnUNet_preprocessed").glob("*/*.json"))
    assert len(preprocessed) == 12  # dataset, fingerprint, plans and splits of 3 configurations
    for deterministic in [Path("qc/qc_table.tsv"), Path("splits/splits_final.json"), *preprocessed]:
        assert (slurm_workdir / "results" / deterministic).read_bytes() == \
            (smoke_run / "results" / deterministic).read_bytes(), deterministic
    # The SLURM study trains 4 epochs of 5 iterations (SLURM_TRAINER_SETTINGS), so its scores are not the local
    # study's: the metric tables have the same rows, and every fold trained as its config said.
    local = pd.read_csv(smoke_run / "results/metrics/summary.tsv", sep="\t")
    cluster = pd.read_csv(slurm_workdir / "results/metrics/summary.tsv", sep="\t")
    keys = ["split", "stage", "class", "metric"]
    merged = local.merge(cluster, on=keys, suffixes=("_local", "_slurm"), validate="one_to_one")
    assert len(merged) == len(local) == len(cluster)
    summaries = sorted((slurm_workdir / "results/training").glob("*/fold_*.json"))
    assert len(summaries) == 15
    for path in summaries:
        summary = json.loads(path.read_text())
        assert summary["epochs"] == SLURM_TRAINER_SETTINGS["num_epochs"], path
        assert SLURM_TRAINER_SETTINGS.items() <= summary["settings"].items(), path


def test_slurm_cluster_start_fails_fast_with_the_daemon_logs(tmp_path):
    """A daemon that dies while starting stops the test with its name and logs, instead of a hang."""
    from slurm_cluster import SlurmCluster

    cluster = SlurmCluster(start_timeout=20, log_dir=tmp_path)
    cluster._daemon("slurmctld", ["sh", "-c", "echo 'fatal: no slurm.conf'; exit 3"])
    with pytest.raises(RuntimeError, match="slurmctld exited with 3 while waiting for slurmctld") as error:
        cluster._wait("slurmctld", lambda: False)
    assert "fatal: no slurm.conf" in str(error.value)
