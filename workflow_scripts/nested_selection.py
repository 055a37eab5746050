"""An unbiased out-of-fold estimate of the whole chosen pipeline: ensemble and refinement chosen inside the folds.

The out-of-fold scores of the ``ensemble`` and ``refined`` stages are optimistic: the ensemble is the best of
every candidate and the rules the best subset, both chosen on the cases they are then scored on. Here, for each
fold k of the training split, the ensemble candidate and then the refinement rules are chosen exactly as the
study chooses them (:mod:`ensemble_selection`, :mod:`refinement_selection`) but on the other folds' out-of-fold
predictions only, and that choice segments fold k's cases: stage ``oof_nested``, one segmentation per training
case from a pipeline chosen without it. nnU-Net's ``find_best_configuration`` and MONAI's Auto3DSeg runner report
the score of the best choice on the same cases.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.ensemble_selection import (candidate_segmentation, rank_candidates,
                                                 read_case_scores, score_candidates, settings_candidates)
from workflow_scripts.io import (array_like, image_array, read_anatomy, read_image, read_probabilities, write_image,
                                  write_table)
from workflow_scripts.metrics import Conventions
from workflow_scripts.refinement import refine, rules_class_ids
from workflow_scripts.refinement_selection import case_subset_rows, choose_rules

def read_segmentation(candidate, case: str, oof_dir: Path, reference_image) -> np.ndarray:
    """One case's label map from the candidate, its configurations' out-of-fold probabilities read from disk."""
    needed = [m for m, _ in candidate.members] + [f[0] for f in candidate.fusions]
    maps = {name: read_probabilities(Path(oof_dir) / name / f"{case}.npz") for name in needed}
    return candidate_segmentation(candidate, maps, case, reference_image.GetSize()[::-1])


def nested_selection(ensemble_settings: dict, refinement_settings: dict, folds: list[list[str]], oof_dir: Path,
                     references_dir: Path, anatomy_paths: dict[str, Path | None], image_dir: Path, out_dir: Path,
                     out_table: Path, rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """Segment every case of ``folds`` (each fold's held-out cases) with the ensemble and rules chosen on the
    other folds; write ``out_dir/<case>.nii.gz`` and one row per fold (choices and their inner scores).
    ``rows``: every case's candidate scores when already computed (``score_ensembles``, as the study's own
    selection read them); else they are computed here."""
    candidates = settings_candidates(ensemble_settings)
    by_name = {c.name: c for c in candidates}
    cases = [case for fold in folds for case in fold]
    fold_of = {case: k for k, fold in enumerate(folds) for case in fold}
    references_dir, image_dir = Path(references_dir), Path(image_dir)
    print(f"nested selection: {len(folds)} folds, {len(candidates)} candidate ensemble(s), {len(cases)} cases",
          flush=True)
    if rows is None:
        rows = score_candidates(candidates, cases, oof_dir, references_dir, ensemble_settings["classes"],
                                Conventions.from_settings(ensemble_settings["conventions"]))
    chosen, ensemble_scores = [], []
    for fold in folds:
        ranked = rank_candidates(candidates, rows[~rows["case"].isin(fold)], ensemble_settings["metric"])
        chosen.append(ranked.loc[0, "candidate"])
        ensemble_scores.append(float(ranked.loc[0, "score"]))

    # Refinement rules per fold, scored on the other folds' cases segmented by that fold's chosen ensemble.
    rules = refinement_settings["rules"]
    class_ids = rules_class_ids(rules, refinement_settings["task"])
    conventions = Conventions.from_settings(refinement_settings["conventions"])
    subset_rows = []
    for i, case in enumerate(cases, 1):
        reference_image = read_image(references_dir / f"{case}.nii.gz")
        reference = image_array(reference_image)
        for name in sorted({chosen[k] for k in range(len(folds)) if k != fold_of[case]}):
            seg_image = array_like(read_segmentation(by_name[name], case, oof_dir, reference_image),
                                   reference_image)
            subset_rows += [{"candidate": name, **r} for r in case_subset_rows(
                case, seg_image, anatomy_paths.get(case), image_dir / f"{case}.nii.gz", reference, rules, class_ids,
                refinement_settings["classes"], conventions)]
        print(f"[{i}/{len(cases)}] {case}: rule subsets scored", flush=True)
    subset_rows = pd.DataFrame(subset_rows)

    table = []
    for k, fold in enumerate(folds):
        inner = subset_rows[(subset_rows["candidate"] == chosen[k]) & ~subset_rows["case"].isin(fold)]
        kept, subsets = choose_rules(rules, inner.drop(columns="candidate"), refinement_settings["metric"],
                                     refinement_settings["apply"])
        fold_rules = [rules[j] for j in kept]
        for case in fold:
            reference_image = read_image(references_dir / f"{case}.nii.gz")
            segmentation = read_segmentation(by_name[chosen[k]], case, oof_dir, reference_image)
            seg_image = array_like(segmentation, reference_image)
            refined, _ = refine(segmentation, read_anatomy(case, anatomy_paths.get(case), seg_image),
                                image_array(read_image(image_dir / f"{case}.nii.gz")), seg_image.GetSpacing(),
                                fold_rules, class_ids, case, seg_image.GetDirection())
            write_image(array_like(refined.astype(np.uint8), reference_image), Path(out_dir) / f"{case}.nii.gz")
        table.append({"fold": k, "held_out": ",".join(fold), "ensemble": chosen[k],
                      "ensemble_metric": ensemble_settings["metric"], "ensemble_inner_score": ensemble_scores[k],
                      "rules": ",".join(r["name"] for r in fold_rules) or "none",
                      "refinement_metric": refinement_settings["metric"],
                      "refinement_inner_score": float(subsets.loc[subsets["chosen"], "score"].iloc[0])})
        print(f"fold {k}: {chosen[k]}; rules {table[-1]['rules']} -> {len(fold)} held-out case(s)", flush=True)
    table = pd.DataFrame(table)
    write_table(table, out_table)
    return table


def nested_selection_entry(argv=None) -> None:
    from workflow_scripts import cli
    from workflow_scripts.io import read_json

    p = cli.parser("nested-selection", "Per fold, choose the ensemble and rules on the other folds' cases and "
                   "apply them to the fold's own.")
    p.add_argument("--ensemble-settings", type=cli.json_value, required=True, help="JSON, as select-ensemble's")
    p.add_argument("--refinement-settings", type=cli.json_value, required=True, help="JSON, as select-refinement's")
    p.add_argument("--splits", required=True, help="splits_final.json: each fold's held-out cases under 'val'")
    p.add_argument("--references", nargs="+", required=True, help="the training cases' labels, <case>.nii.gz")
    p.add_argument("--probabilities", nargs="+", required=True, help="<folder>/<configuration>/<case>.npz files")
    p.add_argument("--case-scores", nargs="+", required=True,
                   help="score-ensembles' <case>.tsv, in --references' order")
    p.add_argument("--anatomy", nargs="+", required=True, help="the cases' anatomy maps, in --references' order")
    p.add_argument("--images", nargs="+", required=True, help="the cases' images, in --references' order")
    p.add_argument("--out-dir", required=True, help="folder of the oof_nested segmentations")
    p.add_argument("--out-table", required=True, help="TSV: per fold the choices and their inner scores")
    args = p.parse_args(argv)
    references_dir, cases = cli.case_folder(args.references, "--references")
    images_dir, image_cases = cli.case_folder(args.images, "--images")
    if image_cases != cases:
        raise SystemExit("error: --images name other cases than --references")
    folds = [split["val"] for split in read_json(args.splits)]
    score_paths = cli.case_paths(args.case_scores, cases)
    try:
        rows = read_case_scores([score_paths[c] for c in cases], cases, settings_candidates(args.ensemble_settings))
    except ValueError as err:
        raise SystemExit(f"error: {err}")
    nested_selection(args.ensemble_settings, args.refinement_settings, folds,
                     cli.probability_root(args.probabilities, cases), references_dir,
                     cli.case_paths(args.anatomy, cases), images_dir, Path(args.out_dir), Path(args.out_table), rows)
