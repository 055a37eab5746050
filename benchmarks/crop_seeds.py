"""The crop option against no crop on the toy study, over several training seeds.

    python -m benchmarks.crop_seeds --seeds 0 1 2 --margin-mm 5 --work /tmp/crop_seeds --out docs/scale

One toy study (``config/toy.yaml``, toy data seed 0) per training seed (``training_seed`` of every configuration)
with ``crop`` off and on, and the first seed's uncropped study once more: with seeded training on the CPU it must
give the same metric tables, byte for byte, or the differences below mean nothing. Written to ``--out``:
``crop_seeds_dice.tsv`` (mean Dice per study, split, stage and class over the cases whose reference holds the class)
and ``crop_seeds.tsv`` (cropped minus uncropped per seed, with their mean, smallest and largest). Studies already
run under ``--work`` are not run again.
"""
from __future__ import annotations

import argparse
import filecmp
import os
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
from benchmarks.scale_rehearsal import dice_over_cases_with_class, run_toy_study
from workflow_scripts.io import write_table


def study_config(seed: int, margin_mm: float | None) -> dict:
    config = yaml.safe_load((REPO / "config/toy.yaml").read_text())
    for section in config["configurations"].values():
        section["training_seed"] = seed
    if margin_mm is not None:
        config["crop"] = {"enabled": True, "margin_mm": margin_mm}  # the schema's default structures
    return config


def same_metric_tables(first: Path, second: Path) -> tuple[bool, list[str]]:
    """Whether two studies' metric tables are byte for byte the same; the ones that differ."""
    names = sorted(p.relative_to(first) for p in (first / "results/metrics").rglob("*.tsv"))
    differ = [str(n) for n in names if not filecmp.cmp(first / n, second / n, shallow=False)]
    return bool(names) and not differ, differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--margin-mm", type=float, default=5.0, help="crop.margin_mm")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--work", type=Path, default=Path("crop_seeds"))
    parser.add_argument("--out", type=Path, default=Path("docs/scale"))
    args = parser.parse_args()
    work, out = args.work.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    studies = [(f"seed{s}_{kind}", s, margin) for s in args.seeds
               for kind, margin in (("uncropped", None), ("cropped", args.margin_mm))]
    studies.append((f"seed{args.seeds[0]}_uncropped_again", args.seeds[0], None))
    dice = []
    for name, seed, margin in studies:
        study = work / name
        run_toy_study(work, name, study_config(seed, margin), args.cores)
        dice.append(dice_over_cases_with_class(study).reset_index()
                    .assign(study=name, seed=seed, crop=margin is not None))

    first = f"seed{args.seeds[0]}_uncropped"
    same, differ = same_metric_tables(work / first, work / f"{first}_again")
    print(f"{first} run twice: metric tables {'byte for byte the same' if same else 'differ: ' + ', '.join(differ)}")

    dice = pd.concat(dice, ignore_index=True)
    write_table(dice[["study", "seed", "crop", "split", "stage", "class", "count", "mean"]], out / "crop_seeds_dice.tsv")
    runs = dice[~dice["study"].str.endswith("_again")]
    wide = runs.pivot_table(index=["split", "stage", "class", "seed"], columns="crop", values="mean")
    wide["difference"] = wide[True] - wide[False]
    per_seed = wide["difference"].unstack("seed")
    per_seed.columns = [f"seed_{s}" for s in per_seed.columns]
    summary = per_seed.assign(mean=per_seed.mean(axis=1), smallest=per_seed.min(axis=1),
                              largest=per_seed.max(axis=1)).reset_index()
    summary.insert(0, "reproducible", same)
    write_table(summary, out / "crop_seeds.tsv")
    pd.set_option("display.width", 200)
    print(summary.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
