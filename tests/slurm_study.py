"""The toy study through the single-node SLURM cluster (tests/slurm_cluster.py), run in the background.

conftest's smoke_run starts it before the local study: most of a SLURM study's time is jobs waiting on the queue and on
Snakemake's start in each job, which overlaps the local study's training on CI's two cores. The slurm tier then
waits for its result."""
from __future__ import annotations

import math
import subprocess
import sys
import threading
from pathlib import Path

import yaml

from workflow_helpers import PROFILES, REPO, TOY_CONFIG, run, tool_env

GPU_RULES = ("train_fold", "predict_test")

# The SLURM study is the toy study with a shorter training: what SLURM changes is where jobs run, not what they
# compute, and the local study already shows the learning. A checkpoint every epoch and four epochs leave the
# preemption watcher a window of three epochs between a training's first checkpoint and its final one.
TRAINER_SETTINGS = {"num_epochs": 4, "num_iterations_per_epoch": 5, "num_val_iterations_per_epoch": 1,
                    "save_every": 1}

TIMEOUT_S = 2700


def expected_group_jobs(cases: int, group: str = "qc") -> int:
    """Group jobs for ``cases`` per-case jobs: the profile packs ``group-components`` of them into each."""
    profile = yaml.safe_load((PROFILES["slurm"] / "config.v8+.yaml").read_text())
    per_job = dict(entry.split("=") for entry in profile["group-components"])
    return math.ceil(cases / int(per_job[group]))


def preempt_one_training(workdir: Path, stop: threading.Event, preempted: dict) -> None:
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


class SlurmStudy:
    """Start with ``start()``; ``result()`` waits and returns the workdir, SLURM's job records, the preempted
    training and Snakemake's return code and output (or raises what went wrong in the background)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.skip_reason: str | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._process: subprocess.Popen | None = None
        self._result: dict | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        from slurm_cluster import missing_requirements

        if self._thread is not None:
            return
        self.skip_reason = missing_requirements()
        if self.skip_reason:
            return
        self._thread = threading.Thread(target=self._run, name="slurm-study", daemon=True)
        self._thread.start()

    def result(self) -> dict:
        self.start()
        if self.skip_reason:
            return {"skip": self.skip_reason}
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result

    def stop(self) -> None:
        """End a study still running (an interrupted session) and wait for the cluster to go down."""
        self._stop.set()
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
        if self._thread is not None:
            self._thread.join(timeout=120)

    def _run(self) -> None:
        try:
            self._result = self._study()
        except BaseException as error:  # handed to result(), in the test's thread
            self._error = error

    def _study(self) -> dict:
        from slurm_cluster import SlurmCluster

        workdir = self.workdir
        run([sys.executable, "-m", "workflow_scripts", "make-toy-data", "--out", "resources/toy"], cwd=workdir)
        config = yaml.safe_load(TOY_CONFIG.read_text())
        for rule in GPU_RULES:  # the toy config's GPU rules ask for a (fake) GPU, as on a real cluster
            config["compute"]["resources"][rule]["gpu"] = True
        for conf in config["configurations"].values():
            conf["trainer_settings"] = {**conf["trainer_settings"], **TRAINER_SETTINGS}
        (workdir / "slurm_toy.yaml").write_text(yaml.safe_dump(config, sort_keys=False))  # label order counts
        cluster = SlurmCluster(memory_mb=16000, gpus=2)
        cluster.start()
        preempted: dict = {}
        watcher = threading.Thread(target=preempt_one_training, args=(workdir, self._stop, preempted), daemon=True)
        watcher.start()
        stdout, stderr = workdir / "snakemake.stdout", workdir / "snakemake.stderr"
        try:
            # CI-only settings on the command line, not in the profile: this node's 2 cores, quicker polling.
            command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
                       "--profile", str(PROFILES["slurm"]), "--configfile", "slurm_toy.yaml", "--cores", "2",
                       "--slurm-init-seconds-before-status-checks", "5", "--seconds-between-status-checks", "5"]
            with open(stdout, "w") as out, open(stderr, "w") as err:
                self._process = subprocess.Popen(command, cwd=workdir, env=tool_env(), stdout=out, stderr=err)
                try:
                    returncode = self._process.wait(timeout=TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    returncode = self._process.wait()
            records = cluster.job_records()
            logs = cluster.logs()
        finally:
            self._stop.set()
            watcher.join(timeout=30)
            cluster.stop()
        return {"workdir": workdir, "records": records, "preempted": preempted, "returncode": returncode,
                "stdout": stdout.read_text(), "stderr": stderr.read_text(), "cluster_logs": logs}

