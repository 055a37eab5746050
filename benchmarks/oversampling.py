"""The metastasis model with the template's foreground oversampling against nnU-Net's default, over several seeds.

    python -m benchmarks.oversampling --seeds 0 1 2 --work /tmp/oversampling --out docs/scale

Per seed, toy data made with that seed (``make-toy-data --seed``) and every fold trained with that
``training_seed``: the toy study's ``metastasis_only`` configuration trained and evaluated out of fold twice, with
nnU-Net's default (at batch size 2 one patch of two centred on a metastasis) and with the template's setting
(``config/config.yaml``: each patch with probability 0.75). Only the targets that model needs run (QC, plans,
trainings, out-of-fold maps and metrics); the other configurations train one iteration, since out-of-fold maps
are gathered for every configuration at once. Written to ``--out``: ``oversampling.tsv``, per seed and setting the
metastasis Dice, voxel recall and lesion recall (detected / reference lesions) over the out-of-fold cases whose
reference holds a metastasis, and the differences per seed with their mean. Studies already run under ``--work``
are not run again. Figures are printed, not asserted.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
from workflow_scripts.io import write_table

TARGET = "results/metrics/oof/metastasis_only.tsv"


def template_oversampling() -> dict:
    settings = yaml.safe_load((REPO / "config/config.yaml").read_text())["configurations"]["metastasis_only"]
    return {k: v for k, v in settings["trainer_settings"].items() if "oversampl" in k}


# The out-of-fold maps are gathered for every configuration at once: the others train as briefly as nnU-Net allows.
BRIEF = {"num_epochs": 1, "num_iterations_per_epoch": 1, "num_val_iterations_per_epoch": 1}


def study_config(seed: int, oversampling: dict) -> dict:
    config = yaml.safe_load((REPO / "config/toy.yaml").read_text())
    for name, section in config["configurations"].items():
        if name != "metastasis_only":
            section["trainer_settings"] = {**section["trainer_settings"], **BRIEF}
    section = config["configurations"]["metastasis_only"]
    section["training_seed"] = seed
    section["trainer_settings"] = {**section["trainer_settings"], **oversampling}
    return config


def run_study(study: Path, seed: int, config: dict, cores: int) -> float:
    """The metastasis model's out-of-fold metrics in ``study``; its wall seconds (once: a finished study is
    read again)."""
    measured = study / "seconds.txt"
    if measured.exists():
        return float(measured.read_text())
    study.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if not (study / "resources/toy/toy_dataset.json").exists():
        subprocess.run([sys.executable, "-m", "workflow_scripts", "make-toy-data", "--seed", str(seed), "--out",
                        str(study / "resources/toy")], check=True, cwd=REPO, env=env)
    (study / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"{study.name}: running in {study}", flush=True)
    start = time.perf_counter()
    with open(study / "snakemake.log", "w") as log:
        result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                                 str(study), "--profile", str(REPO / "profiles/local"), "--cores", str(cores), TARGET,
                                 "--configfile", str(study / "config.yaml")],  # last: it takes several files
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"{study.name} failed after {seconds:.0f} s; see {study / 'snakemake.log'}")
    measured.write_text(f"{seconds:.1f}")
    return seconds


def metastasis_scores(study: Path) -> dict:
    table = pd.read_csv(study / TARGET, sep="\t")
    held = table[(table["class"] == "metastasis") & (table["reference_voxels"] > 0)]
    return {"cases": len(held), "dice": float(held["dice"].mean()), "voxel_recall": float(held["recall"].mean()),
            "lesion_recall": float(held["lesions_detected"].sum() / held["lesions_reference"].sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="toy data and training seeds")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--work", type=Path, default=Path("oversampling"))
    parser.add_argument("--out", type=Path, default=Path("docs/scale"))
    args = parser.parse_args()
    work, out = args.work.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings = {"default": {}, "template": template_oversampling()}
    print(f"template: {settings['template']}", flush=True)
    rows = []
    for seed in args.seeds:
        for name, oversampling in settings.items():
            study = work / f"seed{seed}_{name}"
            seconds = run_study(study, seed, study_config(seed, oversampling), args.cores)
            rows.append({"seed": seed, "setting": name, "seconds": seconds, **metastasis_scores(study)})
    table = pd.DataFrame(rows)
    wide = table.pivot(index="seed", columns="setting", values=["dice", "voxel_recall", "lesion_recall"])
    differences = pd.DataFrame({m: wide[(m, "template")] - wide[(m, "default")]
                                for m in ("dice", "voxel_recall", "lesion_recall")}).reset_index()
    differences.insert(1, "setting", "template - default")
    mean = differences.drop(columns="seed").mean(numeric_only=True).to_dict()
    table = pd.concat([table, differences, pd.DataFrame([{"seed": "mean", "setting": "template - default", **mean}])],
                      ignore_index=True)
    write_table(table, out / "oversampling.tsv")
    pd.set_option("display.width", 200)
    print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
