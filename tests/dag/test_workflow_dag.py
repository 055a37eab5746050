"""The workflow as Snakemake sees it, nothing trained: trainer lookup, lint, dry runs per rule and profile,
config errors, QC stopping the run, and any folder name reaching every command whole."""
import itertools
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from workflow_helpers import (ODD_NAME, PROFILES, REPO, TOY_CONFIG, dry_run_each, job_count, list_rules,
                              odd_folder_study, run, snakemake)

pytestmark = pytest.mark.dag


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

    for rule, result in dry_run_each(toy_workdir, planned, "--profile", PROFILES[profile],
                                     "--configfile", TOY_CONFIG).items():
        assert result["returncode"] == 0, f"--until {rule} failed:\n{result['output'][-3000:]}"
        assert job_count(result["output"], rule) > 0, f"--until {rule} plans no {rule} job:\n{result['output'][-2000:]}"


def job_blocks(dry_run_output):
    """Each job's lines of a dry run, starting at its rule's name."""
    return re.split(r"(?m)^rule ", dry_run_output)[1:]


def test_preflight_is_its_own_target_and_comes_before_every_training(toy_workdir, tmp_path):
    """`snakemake preflight` plans what the probes read and no training; the study's trainings wait for the gate,
    on train_fold's resources (a GPU where training asks for one); `preflight.enabled: false` leaves it out."""
    result = snakemake(toy_workdir, "-n", "preflight", "--configfile", TOY_CONFIG)
    assert job_count(result.stdout, "preflight_checks") == job_count(result.stdout, "preflight_gate") == 1
    assert job_count(result.stdout, "plan_and_preprocess") == 3 and job_count(result.stdout, "train_fold") == 0
    config = yaml.safe_load(TOY_CONFIG.read_text())
    config["compute"]["resources"]["train_fold"].update(gpu=True, mem_mb=7000)
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake(toy_workdir, "-n", "--profile", PROFILES["slurm"], "--configfile", path, "-p",
                       "--until", "preflight_checks")
    job = next(block for block in job_blocks(result.stdout) if block.startswith("preflight_checks:"))
    assert "gpu=1" in job and "mem_mb=7000" in job, job
    # The default target: every train_fold job's input holds the gate's output.
    result = snakemake(toy_workdir, "-n", "--configfile", TOY_CONFIG, "--until", "train_fold")
    trainings = [block for block in job_blocks(result.stdout) if block.startswith("train_fold:")]
    assert len(trainings) == 15 and all("results/preflight/passed.json" in block for block in trainings)
    config = yaml.safe_load(TOY_CONFIG.read_text())
    config["preflight"] = {"enabled": False}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake(toy_workdir, "-n", "--configfile", path)
    assert job_count(result.stdout, "preflight_checks") == 0 and job_count(result.stdout, "train_fold") == 15


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
    assert {"qc-case", "convert-dicom", "convert-dataset", "preflight", "preflight-gate", "train-fold", "gather-oof", "predict", "score-ensembles",
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


def test_slurm_cluster_start_fails_fast_with_the_daemon_logs(tmp_path):
    """A daemon that dies while starting stops the test with its name and logs, instead of a hang."""
    from slurm_cluster import SlurmCluster

    cluster = SlurmCluster(start_timeout=20, log_dir=tmp_path)
    cluster._daemon("slurmctld", ["sh", "-c", "echo 'fatal: no slurm.conf'; exit 3"])
    with pytest.raises(RuntimeError, match="slurmctld exited with 3 while waiting for slurmctld") as error:
        cluster._wait("slurmctld", lambda: False)
    assert "fatal: no slurm.conf" in str(error.value)
