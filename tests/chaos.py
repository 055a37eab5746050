"""The toy study run with its Snakemake process group killed (SIGKILL) at seeded moments spread over the DAG, each
time recovered as docs/slurm.md (Resuming) says: `snakemake --unlock` with the same arguments, then the same command.

A moment is a stage and a condition on the study folder (the k-th job of a rule has started, k drawn from the
seed; then a drawn delay): conditions read the files jobs write, so the same seed kills at the same points of
the DAG however fast the machine is. What was killed is recorded for the tests (``CHAOS_RECORD``)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from workflow_helpers import REPO, TOY_CONFIG, tool_env

CHAOS_RECORD = "chaos.json"
TRAININGS = "results/nnunet/nnUNet_results/*/*/fold_*"


@dataclass
class Moment:
    stage: str
    pattern: str  # files that appear as the stage's jobs start or checkpoint
    count: int  # kill once this many exist...
    delay_s: float  # ...and this long after
    unfinished_training: bool = False  # ...and a training holds a checkpoint but no final one


def moments(seed: int) -> list[Moment]:
    """Eight kills: QC, planning, the preflight, training (a fold between its checkpoints), out-of-fold
    predictions, ensemble scoring, the test set's prediction parts and the tables and pictures at the end."""
    rng = random.Random(seed)
    return [
        Moment("qc", "logs/qc_case/*.log", rng.randint(2, 12), rng.uniform(0, 1)),
        Moment("planning", "logs/plan_and_preprocess/*.log", rng.randint(1, 3), rng.uniform(1, 3)),
        Moment("preflight", "logs/preflight_checks.log", 1, rng.uniform(2, 10)),
        Moment("training", f"{TRAININGS}/checkpoint_final.pth", rng.randint(1, 12), 0, unfinished_training=True),
        Moment("out-of-fold", "logs/gather_oof/*.log", rng.randint(1, 10), rng.uniform(0, 1)),
        Moment("selection", "logs/score_ensembles/*.log", rng.randint(1, 10), rng.uniform(0, 1)),
        Moment("prediction", "logs/predict_test/*.log", 1, rng.uniform(1, 5)),
        Moment("report", "logs/overlay_case/*.log", rng.randint(1, 2), rng.uniform(0, 1)),
    ]


def checkpoint_epochs(workdir: Path) -> dict[str, int]:
    """The epoch each unfinished training would resume from (its checkpoint_latest.pth)."""
    import torch

    epochs = {}
    for folder in sorted(workdir.glob(TRAININGS)):
        latest = folder / "checkpoint_latest.pth"
        if latest.exists() and not (folder / "checkpoint_final.pth").exists():
            checkpoint = torch.load(latest, map_location="cpu", weights_only=False)
            epochs[str(folder.relative_to(workdir))] = int(checkpoint["current_epoch"])
    return epochs


def due(workdir: Path, moment: Moment) -> bool:
    if len(list(workdir.glob(moment.pattern))) < moment.count:
        return False
    if not moment.unfinished_training:
        return True
    return any((f / "checkpoint_latest.pth").exists() and not (f / "checkpoint_final.pth").exists()
               for f in workdir.glob(TRAININGS))


def chaos_study(workdir: Path, args: list[str], seed: int, timeout_s: float) -> dict:
    """Run ``snakemake <args>`` in ``workdir`` to the end, killed at each of ``moments(seed)`` on the way."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    deadline = time.monotonic() + timeout_s
    kills, runs = [], 0
    pending = moments(seed)
    while True:
        runs += 1
        with open(workdir / f"chaos_run_{runs}.log", "w") as out:
            process = subprocess.Popen(command, cwd=workdir, env=tool_env(), stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            moment, due_since = (pending.pop(0) if pending else None), None
            while process.poll() is None:
                assert time.monotonic() < deadline, f"the chaos study ran past {timeout_s} s"
                if moment is not None and due_since is None and due(workdir, moment):
                    due_since = time.monotonic()
                if due_since is not None and time.monotonic() - due_since >= moment.delay_s:
                    os.killpg(process.pid, signal.SIGKILL)  # Snakemake and every job it started
                    process.wait()
                    kills.append({"stage": moment.stage, "after_files": moment.count, "delay_s": moment.delay_s,
                                  "run": runs, "killed_at": time.time(), "checkpoints": checkpoint_epochs(workdir)})
                    break
                time.sleep(0.2)
        if process.returncode == -signal.SIGKILL and kills and kills[-1]["run"] == runs:
            unlock = subprocess.run([*command, "--unlock"], cwd=workdir, env=tool_env(), capture_output=True,
                                    text=True, timeout=600)
            assert unlock.returncode == 0, unlock.stderr[-3000:]
            continue
        log = (workdir / f"chaos_run_{runs}.log").read_text()
        assert process.returncode == 0, f"the study's run {runs} failed:\n{log[-6000:]}"
        missed = [m.stage for m in ([moment] if moment else []) + pending]
        record = {"seed": seed, "kills": kills, "runs": runs, "missed": missed}
        (workdir / CHAOS_RECORD).write_text(json.dumps(record, indent=1))
        return record


@dataclass
class ResumedFoldTwin:
    """A fold the chaos study resumed (``fold_dir``), trained again from scratch in a process of its own: the same
    preprocessed data, settings, seed and threads, never stopped. ``wait()`` returns its folder when it is done."""
    configuration: str
    fold: int
    fold_dir: Path
    twin_dir: Path
    summary: Path
    process: subprocess.Popen
    log: Path

    def wait(self, timeout_s: float = 900) -> Path:
        returncode = self.process.wait(timeout=timeout_s)
        assert returncode == 0, self.log.read_text()[-3000:]
        return self.twin_dir


def start_resumed_fold_twin(workdir: Path, out: Path) -> ResumedFoldTwin | None:
    """Start training the first fold the chaos study resumed again, in the background, with the ``train-fold``
    verb in an nnU-Net folder of its own under ``out``; None when no kill caught a fold between checkpoints.
    The smoke run starts it as the study ends, so it trains on the second core while the tests read the study."""
    import shutil

    import yaml

    from workflow_scripts.config import validate_config
    from workflow_scripts.settings import rule_resources, verb_settings

    record = json.loads((workdir / CHAOS_RECORD).read_text())
    resumed = sorted(fold for kill in record["kills"] for fold in kill["checkpoints"])
    if not resumed:
        return None
    fold_dir = workdir / resumed[0]
    dataset, fold = fold_dir.parent.parent.name, int(fold_dir.name.split("_")[1])
    configuration = dataset.split("_", 1)[1]
    root = out / "nnunet"
    shutil.copytree(workdir / "results/nnunet/nnUNet_preprocessed" / dataset, root / "nnUNet_preprocessed" / dataset)
    config = validate_config(yaml.safe_load(TOY_CONFIG.read_text()), base=workdir)
    command = [str(arg) for arg in [
        sys.executable, "-m", "workflow_scripts", "train-fold", "--nnunet-root", root,
        "--threads", rule_resources(config, "train_fold")["threads"],
        "--plans-summary", workdir / f"results/datasets/{configuration}/plans_summary.json", "--fold", fold,
        "--settings", json.dumps(verb_settings(config, "train-fold", [configuration])),
        "--out", out / "fold.json"]]
    log = out / "train_fold.log"
    with open(log, "w") as stream:
        process = subprocess.Popen(command, cwd=out, env=tool_env(), stdout=stream, stderr=subprocess.STDOUT)
    twin_dir = root / "nnUNet_results" / dataset / fold_dir.parent.name / fold_dir.name
    return ResumedFoldTwin(configuration=configuration, fold=fold, fold_dir=fold_dir, twin_dir=twin_dir,
                           summary=out / "fold.json", process=process, log=log)
