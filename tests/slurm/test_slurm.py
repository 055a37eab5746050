"""The toy DAG through a real single-node SLURM cluster with the SLURM profile, against the local smoke run."""
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workflow_helpers import PROFILES, TOY_CONFIG, run, snakemake

pytestmark = pytest.mark.slurm


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
