"""A training killed after its first checkpoint resumes from it when the workflow runs again and goes on with the
epochs it had left; another seed gives other weights. (That the resumed fold ends with the weights of the
uninterrupted run is shown on a fold of the chaos study, tests/smoke/test_toy_study.py.)"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from workflow_helpers import (PROFILES, REPO, TOY_CONFIG, run, same_probabilities, snakemake,
                              validation_probabilities, weights_digest)

pytestmark = pytest.mark.smoke  # trains one toy fold twice, re-validates it once

TARGET = "results/training/metastasis_only/fold_0.json"
CONFIGURATION = yaml.safe_load(TOY_CONFIG.read_text())["configurations"]["metastasis_only"]
EPOCHS = CONFIGURATION["trainer_settings"]["num_epochs"]
ITERATIONS = 10  # per epoch, instead of the toy's: the kill and the resume need epochs, not learning
FOLD = (f"results/nnunet/nnUNet_results/Dataset503_metastasis_only/{CONFIGURATION['trainer']}__nnUNetPlans__3d_fullres"
        "/fold_0")


def test_killed_training_resumes_from_its_checkpoint_another_seed_differs_uint8_revalidates(tmp_path):
    run([sys.executable, "-m", "workflow_scripts", "make-toy-data", "--out", "resources/toy"], cwd=tmp_path)
    config = yaml.safe_load(TOY_CONFIG.read_text())
    settings = config["configurations"]["metastasis_only"]["trainer_settings"]
    config["configurations"]["metastasis_only"]["trainer_settings"] = {**settings, "num_iterations_per_epoch": ITERATIONS}
    config_path = tmp_path / "resume.yaml"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
               "--profile", str(PROFILES["local"]), "--configfile", str(config_path), "--cores", "2", TARGET]

    # First the preflight with two failures injected (CUDA asked for on this CPU machine; a disk margin no disk
    # meets): the run stops before any training with one message naming both fixes, and its table stays.
    config_path.write_text(yaml.safe_dump({**config, "compute": {**config["compute"], "device": "cuda"},
                                           "preflight": {"disk_margin": 1e9}}, sort_keys=False))
    stopped = run(command, cwd=tmp_path, check=False)
    assert stopped.returncode != 0
    message = stopped.stderr[stopped.stderr.index("error: preflight:"):]
    assert message.startswith("error: preflight: 2 check(s) failed; nothing was trained")
    assert "- device (cuda): compute.device is 'cuda'" in message and "- disk (results):" in message
    assert "Traceback" not in stopped.stderr
    table = pd.read_csv(tmp_path / "results/preflight/preflight.tsv", sep="\t")
    assert sorted(table[table["status"] == "fail"]["check"].unique()) == ["device", "disk"]
    assert not (tmp_path / "results/nnunet/nnUNet_results").exists() or not any(
        (tmp_path / "results/nnunet/nnUNet_results").iterdir())
    assert not (tmp_path / "results/preflight/passed.json").exists()

    # Fixed, the same command: the preflight passes, then training starts (and is killed).
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))  # label order is meaningful
    latest = tmp_path / FOLD / "checkpoint_latest.pth"
    with open(tmp_path / "first_run.log", "w") as out:
        first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        deadline = time.monotonic() + 900
        while not latest.exists():
            assert first.poll() is None, (tmp_path / "first_run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 15 minutes"
            time.sleep(0.5)
        os.killpg(first.pid, signal.SIGKILL)  # as a preemption or `kill -9` would
        first.wait()
    assert not (tmp_path / TARGET).exists() and not (tmp_path / FOLD / "checkpoint_final.pth").exists()
    checkpoint_epoch = int(run([sys.executable, "-c", "import sys, torch; print(torch.load(sys.argv[1], "
                                "weights_only=False)['current_epoch'])", str(latest)], cwd=tmp_path).stdout)
    assert 1 <= checkpoint_epoch < EPOCHS
    # progress_plot_every (the toy's: every 4th epoch, and the last): no progress.png after the checkpointed epochs,
    # where nnU-Net draws one as each epoch ends.
    assert CONFIGURATION["progress_plot_every"] == EPOCHS and not (tmp_path / FOLD / "progress.png").exists()

    # Where the stopped study is, read from nnU-Net's log and Snakemake's state (the lock left behind is ignored).
    run([sys.executable, "-m", "workflow_scripts", "progress", "--study", tmp_path, "--configfile", config_path,
         "--out", tmp_path / "progress"], cwd=tmp_path)
    folds = pd.read_csv(tmp_path / "progress/folds.tsv", sep="\t")
    assert len(folds) == 1, folds
    fold = folds.iloc[0]
    assert (fold["configuration"], fold["fold"], fold["state"]) == ("metastasis_only", 0, "running or stopped")
    assert checkpoint_epoch <= fold["epochs_done"] < fold["epochs_total"] == EPOCHS
    assert fold["epoch_seconds"] > 0 and isinstance(fold["estimated_end"], str)
    jobs = pd.read_csv(tmp_path / "progress/jobs.tsv", sep="\t").set_index("rule")
    assert jobs.loc["preflight_checks", "done"] == jobs.loc["preflight_checks", "jobs"] == 1
    assert jobs.loc["train_fold", "done"] == 0 and jobs.loc["train_fold", "jobs"] == 15
    assert jobs.loc["qc_case", "done"] == jobs.loc["qc_case", "jobs"] == 15  # finished before the kill

    snakemake(tmp_path, "--unlock", "--configfile", config_path)  # the killed run left its lock behind
    snakemake(tmp_path, "--profile", PROFILES["local"], "--configfile", config_path, "--cores", "2", TARGET)

    summary = json.loads((tmp_path / TARGET).read_text())
    assert summary["resumed_from"] == f"epoch {checkpoint_epoch}"
    assert summary["settings"]["num_iterations_per_epoch"] == ITERATIONS
    assert summary["epochs"] == EPOCHS and (tmp_path / FOLD / "checkpoint_final.pth").exists()
    assert (tmp_path / FOLD / "progress.png").exists()  # drawn after the last epoch
    # The epoch counter continues: nnU-Net's history holds every epoch once, from both runs.
    curves = (tmp_path / TARGET.replace(".json", "_curves.tsv")).read_text().splitlines()
    assert [line.split("\t")[0] for line in curves[1:]] == [str(e) for e in range(EPOCHS)]
    # nnU-Net keeps one training log per run: the killed run's, then the resumed run's, which goes on from the
    # checkpoint's epoch; the rule log says where it resumed from.
    first_log, second_log = [p.read_text() for p in sorted((tmp_path / FOLD).glob("training_log_*.txt"))]
    first_epochs = [int(e) for e in re.findall(r": Epoch (\d+)\s*$", first_log, re.MULTILINE)]
    second_epochs = [int(e) for e in re.findall(r": Epoch (\d+)\s*$", second_log, re.MULTILINE)]
    assert first_epochs[:checkpoint_epoch] == list(range(checkpoint_epoch))
    assert second_epochs == list(range(checkpoint_epoch, EPOCHS))
    assert f"at epoch {checkpoint_epoch}" in second_log
    rule_log = (tmp_path / "logs/train_fold/metastasis_only/fold_0.log").read_text()
    assert f"Resuming from {tmp_path / FOLD / 'checkpoint_latest.pth'} at epoch {checkpoint_epoch}" in rule_log

    # Seeded per epoch (training_seed, the fold, the epoch), the resumed fold is the uninterrupted one: the smoke
    # tier trains a fold the chaos study resumed again without a stop and finds the same weights and validation
    # probabilities (test_a_fold_the_chaos_run_resumed_equals_its_uninterrupted_training).
    final = tmp_path / FOLD / "checkpoint_final.pth"
    resumed = weights_digest(final)
    resumed_validation = validation_probabilities(tmp_path / FOLD)

    # `training_seed`: another seed, from scratch, gives other weights and other validation probabilities (the
    # preflight is left out: it ran above, and this is one fold's seeding).
    config["configurations"]["metastasis_only"]["training_seed"] = 1
    config["preflight"] = {"enabled": False}
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.rmtree(tmp_path / FOLD)
    snakemake(tmp_path, "--profile", PROFILES["local"], "--configfile", config_path, "--cores", "2", TARGET,
              "--forcerun", "train_fold")
    summary = json.loads((tmp_path / TARGET).read_text())
    assert summary["training_seed"] == 1 and summary["resumed_from"] is None
    other = weights_digest(final)
    other_validation = validation_probabilities(tmp_path / FOLD)
    assert other != resumed and not same_probabilities(other_validation, resumed_validation)

    # prediction.probability_encoding: uint8. The trained fold is only re-validated, and nnU-Net's own export now
    # writes uint8 within the two roundings of the float16 files.
    config["prediction"] = {**config.get("prediction", {}), "probability_encoding": "uint8"}
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake(tmp_path, "--profile", PROFILES["local"], "--configfile", config_path, "--cores", "2", TARGET,
              "--forcerun", "train_fold")
    summary = json.loads((tmp_path / TARGET).read_text())
    assert summary["resumed_from"] == "final" and summary["probability_encoding"] == "uint8"
    assert weights_digest(final) == other
    rounded = validation_probabilities(tmp_path / FOLD)
    assert rounded.keys() == other_validation.keys()
    for name, stored in rounded.items():
        assert stored.dtype == np.uint8, name
        error = np.abs(stored / 255.0 - other_validation[name].astype(np.float64))
        assert error.max() <= 0.5 / 255 + 2.0 ** -12 + 1e-9, (name, error.max())
