"""Where a study is, while it runs or after it stopped: it reads and never starts anything.

    python -m workflow_scripts progress --study <study folder> --configfile <its config>

Per fold of every configuration: the epochs finished of the total, the last pseudo Dice, the median seconds of the
last five epochs and the estimated end, from the training logs nnU-Net writes as it goes (``training_log_*.txt``;
a resumed fold has one per run) and its ``debug.json``. Per rule: the jobs done of all, from two dry runs of
Snakemake on the study (without its lock, so a running study is read as it is; done: outputs present and newer
than their inputs).
"""
from __future__ import annotations

import datetime as dt
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from workflow_scripts.io import write_table

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+): (.*?)\s*$")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")
FOLD_COLUMNS = ["configuration", "fold", "state", "epochs_done", "epochs_total", "pseudo_dice", "epoch_seconds",
                "last_log", "estimated_end"]


def read_training_logs(paths: list[Path]) -> dict:
    """From nnU-Net's training logs of one fold (in the order they were written): per finished epoch its pseudo
    Dice (per class) and seconds, and the time of the last line."""
    epochs: dict[int, dict] = {}
    last, current = None, None
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            match = STAMP.match(line)
            if not match:
                continue
            last = dt.datetime.fromisoformat(match.group(1))
            text = match.group(2)
            if text.startswith("Epoch time:"):
                if current is not None:
                    epochs.setdefault(current, {})["seconds"] = float(NUMBER.findall(text)[0])
            elif text.startswith("Epoch "):
                current = int(text.split()[1])
            elif text.startswith("Pseudo dice") and current is not None:
                values = NUMBER.findall(text.replace("np.float32", "").replace("np.float64", ""))
                epochs.setdefault(current, {})["pseudo_dice"] = [float(v) for v in values]
    finished = {k: v for k, v in epochs.items() if "seconds" in v}
    return {"epochs": finished, "last_log": last}


def fold_progress(results_root: Path) -> pd.DataFrame:
    """One row per fold folder under ``results_root`` (nnUNet_results): see the module's docstring."""
    rows = []
    for fold_dir in sorted(Path(results_root).glob("Dataset*/*/fold_*")):
        logs = sorted(fold_dir.glob("training_log_*.txt"))
        if not logs:
            continue
        debug = fold_dir / "debug.json"
        total = int(json.loads(debug.read_text())["num_epochs"]) if debug.exists() else None
        log = read_training_logs(logs)
        done = max(log["epochs"]) + 1 if log["epochs"] else 0
        recent = [log["epochs"][k]["seconds"] for k in sorted(log["epochs"])[-5:]]
        seconds = float(pd.Series(recent).median()) if recent else math.nan
        finished = (fold_dir / "checkpoint_final.pth").exists()
        end = None
        if not finished and total is not None and recent and log["last_log"] is not None:
            end = log["last_log"] + dt.timedelta(seconds=(total - done) * seconds)
        last_dice = log["epochs"][done - 1].get("pseudo_dice") if done else None
        rows.append({
            "configuration": fold_dir.parent.parent.name.split("_", 1)[1], "fold": int(fold_dir.name.split("_")[1]),
            "state": "finished" if finished else "running or stopped",
            "epochs_done": done, "epochs_total": total,
            "pseudo_dice": " ".join(f"{d:.3f}" for d in last_dice) if last_dice else "",
            "epoch_seconds": round(seconds, 1),
            "last_log": log["last_log"].isoformat(sep=" ", timespec="seconds") if log["last_log"] else "",
            "estimated_end": end.isoformat(sep=" ", timespec="minutes") if end else ""})
    return pd.DataFrame(rows, columns=FOLD_COLUMNS)


def job_counts(dry_run_output: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake dry run: {rule: jobs} (no table: nothing to do)."""
    if "Job stats:" not in dry_run_output:
        return {}
    table = dry_run_output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)\s*$", line)
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    counts.pop("total", None)
    return counts


def stage_progress(study: Path, configfile: Path, snakefile: Path) -> pd.DataFrame:
    """Per rule the jobs of the whole study (a forced dry run) and those still to run (a plain dry run)."""
    def dry_run(*extra: str) -> dict[str, int]:
        result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(snakefile), "--directory", str(study),
                                 "--configfile", str(configfile), "--dry-run", "--nolock", "--quiet", "rules", *extra],
                                capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"Snakemake's dry run of {study} failed:\n{result.stderr[-2000:]}")
        return job_counts(result.stdout + result.stderr)

    # A job is done when its outputs exist and are newer than its inputs: code or settings edited since do not
    # count as work left (the study command decides that).
    total, remaining = dry_run("--forceall"), dry_run("--rerun-triggers", "mtime")
    rows = [{"rule": rule, "done": count - remaining.get(rule, 0), "jobs": count} for rule, count in total.items()
            if rule != "all"]
    return pd.DataFrame(rows, columns=["rule", "done", "jobs"])


def progress_entry(argv=None) -> None:
    from workflow_scripts import cli

    p = cli.parser("progress", "Where a running or stopped study is: training epochs per fold with an estimated "
                   "end, jobs done per rule. Reads only.")
    p.add_argument("--study", default=".", help="the study's folder (Snakemake's --directory)")
    p.add_argument("--configfile", required=True, help="the study's config")
    p.add_argument("--results", help="nnU-Net's results folder (default: <study>/results/nnunet/nnUNet_results)")
    p.add_argument("--out", help="also write the two tables here, as folds.tsv and jobs.tsv")
    args = p.parse_args(argv)
    study = Path(args.study).resolve()
    results = Path(args.results) if args.results else study / "results" / "nnunet" / "nnUNet_results"
    pd.set_option("display.width", 200)
    folds = fold_progress(results)
    print("Training (nnU-Net's logs):")
    print(folds.to_string(index=False) if len(folds) else "  no training has started")
    try:
        stages = stage_progress(study, Path(args.configfile).resolve(),
                                Path(__file__).resolve().parents[1] / "Snakefile")
    except RuntimeError as err:
        raise SystemExit(f"error: {err}")
    if args.out:
        write_table(folds, Path(args.out) / "folds.tsv")
        write_table(stages, Path(args.out) / "jobs.tsv")
    done, jobs = int(stages["done"].sum()), int(stages["jobs"].sum())
    print(f"\nJobs (Snakemake's dry runs): {done} of {jobs} done")
    print(stages.to_string(index=False))
