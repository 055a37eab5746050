"""The toy DAG through a real single-node SLURM cluster with the SLURM profile, against the local smoke run."""
import json
import math
import os
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from slurm_study import GPU_RULES, TRAINER_SETTINGS, expected_group_jobs

pytestmark = pytest.mark.slurm


def slurm_jobs_by_rule(workdir):
    """SLURM job ids per rule (or group), from the job logs the plugin writes under logs/slurm/<rule or group>/."""
    jobs = {}
    for log in (workdir / "logs" / "slurm").rglob("*.log"):
        name = log.relative_to(workdir / "logs" / "slurm").parts[0]
        jobs.setdefault(name, []).append(log.stem)
    return jobs


@pytest.fixture(scope="module")
def slurm_run(slurm_study):
    """The SLURM study (tests/slurm_study.py), started in the background with the smoke tier, once finished."""
    result = slurm_study.result()
    if "skip" in result:
        if os.environ.get("CI"):
            pytest.fail(f"{result['skip']}; .ci/run installs SLURM")
        pytest.skip(result["skip"])
    assert result["returncode"] == 0, \
        f"{result['stdout'][-3000:]}\n{result['stderr'][-6000:]}\n{result['cluster_logs']}"
    return result


def test_slurm_jobs_ran_through_slurm_with_gpus_for_gpu_rules(slurm_run):
    workdir = slurm_run["workdir"]
    jobs = slurm_jobs_by_rule(workdir)
    records = slurm_run["records"]
    assert len(list((workdir / "logs/slurm/rule_train_fold").iterdir())) == 15  # one folder per fold
    for rule in ("rule_train_fold", "rule_predict_test", "rule_plan_and_preprocess", "rule_convert_dicom",
                 "rule_preflight_checks"):
        assert rule in jobs, f"no SLURM job log for {rule}: {sorted(jobs)}"
    assert any(name.startswith("group_out_of_fold") for name in jobs), sorted(jobs)  # 12 per-case gathers
    assert any(name.startswith("group_ensemble_scores") for name in jobs), sorted(jobs)  # 12 per-case scorings
    # 15 trainings, one of them submitted twice (preempted, then resubmitted).
    assert len(jobs["rule_train_fold"]) == 15 + bool(slurm_run["preempted"])
    # Per-case jobs are packed into group jobs: 15 QC cases in one SLURM job (the profile packs 25), not 15.
    assert len(jobs.get("group_qc_qc_case", [])) == expected_group_jobs(15) == 1
    assert len(jobs.get("group_qc_anatomy_qc_anatomy", [])) == expected_group_jobs(15, "qc_anatomy")
    preempted = slurm_run["preempted"]
    for name, ids in jobs.items():
        for job_id in ids:
            record = records.get(job_id)
            assert record is not None, f"SLURM has no record of job {job_id} ({name})"
            expected = "CANCELLED" if job_id == preempted.get("job") else "COMPLETED"
            assert record["JobState"] == expected, record
            has_gpu = "gpu:1" in record.get("TresPerJob", "")
            # The preflight runs on train_fold's resources: on the GPU nodes training will use.
            assert has_gpu == any(name == f"rule_{rule}" for rule in (*GPU_RULES, "preflight_checks")), (name, record)
    # Aggregations ran on the submit host (localrules), not as cluster jobs.
    for rule in ("qc_report", "qc_gate", "qc_anatomy_report", "make_splits", "summarize_metrics", "summarize_runtime",
                 "preflight_gate", "select_ensemble", "nested_ensembles", "select_refinement", "nested_selection"):
        assert f"rule_{rule}" not in jobs


def minutes(time_limit: str) -> int | None:
    """SLURM's [D-]HH:MM:SS (or MM:SS) in minutes; None for UNLIMITED (a job submitted without a runtime)."""
    if time_limit == "UNLIMITED":
        return None
    days, _, clock = time_limit.rpartition("-")
    parts = [int(part) for part in clock.split(":")]
    hours, mins = (parts[0], parts[1]) if len(parts) == 3 else (0, parts[0])
    return int(days or 0) * 1440 + hours * 60 + mins


def test_slurm_group_jobs_ask_for_their_members_in_series(slurm_run):
    """The plugin runs a group's members one after another: a group job asks for one member's core and the sum
    of its members' runtimes (the profile's members_at_once), not one core per member and one member's runtime."""
    workdir, records = slurm_run["workdir"], slurm_run["records"]
    runtime = yaml.safe_load((workdir / "slurm_toy.yaml").read_text())["compute"]["resources"]["default"]["runtime"]
    packed, wrong = set(), []
    for log in (workdir / "logs" / "slurm").glob("group_*/**/*.log"):
        command = next(line for line in log.read_text().splitlines() if "--target-jobs" in line)
        members = command.split("--target-jobs", 1)[1].split(" --", 1)[0].split()
        record = records[log.stem]
        asked = (record["NumCPUs"], minutes(record["TimeLimit"]))
        if asked != ("1", runtime * len(members)):
            wrong.append(f"{log.parent.name}/{log.name}: {len(members)} members, asked for {asked}")
        if len(members) > 1:
            packed.add(log.relative_to(workdir / "logs" / "slurm").parts[0])
    assert not wrong, wrong
    assert len(packed) == 9, sorted(packed)  # every group of the profile but crop (off in the toy study)


def test_slurm_preempted_training_was_resubmitted_and_resumed(slurm_run):
    preempted = slurm_run["preempted"]
    assert preempted, "no training was preempted: the watcher found no running training with a checkpoint"
    workdir = slurm_run["workdir"]
    configuration, fold = preempted["configuration"], preempted["fold"]
    logs = sorted((workdir / "logs/slurm/rule_train_fold" / f"{configuration}_{fold}").glob("*.log"))
    assert len(logs) == 2 and preempted["job"] in [log.stem for log in logs]
    summary = json.loads((workdir / f"results/training/{configuration}/fold_{fold}.json").read_text())
    assert summary["resumed_from"].startswith("epoch "), summary
    assert summary["epochs"] == TRAINER_SETTINGS["num_epochs"]
    # The retry asked for more: memory and runtime times compute.retry_growth (the schema's 1.5).
    from workflow_scripts.config import section_settings

    compute = section_settings("compute", yaml.safe_load((workdir / "slurm_toy.yaml").read_text())["compute"])
    growth = compute["retry_growth"]
    train = {**compute["resources"]["default"], **compute["resources"]["train_fold"]}
    first, retry = sorted((slurm_run["records"][log.stem] for log in logs), key=lambda r: int(r["JobId"]))
    assert (minutes(first["TimeLimit"]), first["MinMemoryNode"]) == (train["runtime"], f"{train['mem_mb']}M")
    assert (minutes(retry["TimeLimit"]), retry["MinMemoryNode"]) == (
        math.ceil(train["runtime"] * growth), f"{math.ceil(train['mem_mb'] * growth)}M"), retry


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
    # The SLURM study trains 4 epochs of 5 iterations (TRAINER_SETTINGS), so its scores are not the local
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
        assert summary["epochs"] == TRAINER_SETTINGS["num_epochs"], path
        assert TRAINER_SETTINGS.items() <= summary["settings"].items(), path
