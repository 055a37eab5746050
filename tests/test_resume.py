"""A training killed after its first checkpoint resumes from it when the workflow runs again."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.test_workflow import PROFILES, REPO, TOY_CONFIG, run, snakemake

TARGET = "results/training/metastasis_only/fold_0.json"
FOLD = "results/nnunet/nnUNet_results/Dataset503_metastasis_only/nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres/fold_0"


def test_killed_training_resumes_from_its_checkpoint(tmp_path):
    run([sys.executable, "-m", "workflow_scripts", "make-toy-data", "--out", "resources/toy"], cwd=tmp_path)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
               "--profile", str(PROFILES["local"]), "--configfile", str(TOY_CONFIG), "--cores", "2", TARGET]
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
    assert 1 <= checkpoint_epoch < 10

    snakemake(tmp_path, "--unlock", "--configfile", TOY_CONFIG)  # the killed run left its lock behind
    snakemake(tmp_path, "--profile", PROFILES["local"], "--configfile", TOY_CONFIG, "--cores", "2", TARGET)

    summary = json.loads((tmp_path / TARGET).read_text())
    assert summary["resumed_from"] == f"epoch {checkpoint_epoch}"
    assert summary["epochs"] == 10 and (tmp_path / FOLD / "checkpoint_final.pth").exists()
    # The epoch counter continues: nnU-Net's history holds every epoch once, from both runs.
    curves = (tmp_path / TARGET.replace(".json", "_curves.tsv")).read_text().splitlines()
    assert [line.split("\t")[0] for line in curves[1:]] == [str(e) for e in range(10)]
    # nnU-Net keeps one training log per run: the killed run's, then the resumed run's, which goes on from the
    # checkpoint's epoch; the rule log says where it resumed from.
    first_log, second_log = [p.read_text() for p in sorted((tmp_path / FOLD).glob("training_log_*.txt"))]
    first_epochs = [int(e) for e in re.findall(r": Epoch (\d+)\s*$", first_log, re.MULTILINE)]
    second_epochs = [int(e) for e in re.findall(r": Epoch (\d+)\s*$", second_log, re.MULTILINE)]
    assert first_epochs[:checkpoint_epoch] == list(range(checkpoint_epoch))
    assert second_epochs == list(range(checkpoint_epoch, 10))
    assert f"at epoch {checkpoint_epoch}" in second_log
    rule_log = (tmp_path / "logs/train_fold/metastasis_only/fold_0.log").read_text()
    assert f"Resuming from {tmp_path / FOLD / 'checkpoint_latest.pth'} at epoch {checkpoint_epoch}" in rule_log
