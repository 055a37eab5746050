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

from workflow_scripts.ensemble_selection import (rank_candidates, read_candidate_segmentation, read_case_scores,
                                                 score_candidates, settings_candidates)
from workflow_scripts.io import array_like, image_array, read_anatomy, read_image, write_image, write_table
from workflow_scripts.metrics import Conventions
from workflow_scripts.refinement import refine, rules_class_ids
from workflow_scripts.refinement_selection import (choose_rules, other_folds_choices, read_refinement_scores,
                                                   score_case_refinements)
from workflow_scripts.settings import ensemble_selection, refinement_selection

FOLD_COLUMNS = ["fold", "held_out", "ensemble", "ensemble_metric", "ensemble_inner_score"]


def nested_ensembles(ensemble_settings: dict, folds: list[list[str]], rows: pd.DataFrame) -> pd.DataFrame:
    """Per fold, the candidate ensemble ranked first on the other folds' cases (``rows``: every case's candidate
    scores, as ``score_ensembles`` writes them)."""
    candidates = settings_candidates(ensemble_settings)
    table = []
    for k, fold in enumerate(folds):
        ranked = rank_candidates(candidates, rows[~rows["case"].isin(fold)], ensemble_settings["metric"])
        table.append({"fold": k, "held_out": ",".join(fold), "ensemble": ranked.loc[0, "candidate"],
                      "ensemble_metric": ensemble_settings["metric"],
                      "ensemble_inner_score": float(ranked.loc[0, "score"])})
    return pd.DataFrame(table, columns=FOLD_COLUMNS)


def nested_rules(refinement_settings: dict, ensembles: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """``ensembles`` with each fold's rules, chosen on the other folds' cases segmented by the fold's ensemble
    (``rows``: rule-subset scores per case of the candidates rebuilt from probabilities, ``source`` of
    :func:`score_case_refinements`)."""
    rules = refinement_settings["rules"]
    rows = rows[rows["source"] == "probabilities"]
    all_cases = [case for held_out in ensembles["held_out"] for case in held_out.split(",")]
    table = []
    for fold in ensembles.to_dict("records"):
        held_out = fold["held_out"].split(",")
        inner = rows[(rows["candidate"] == fold["ensemble"]) & ~rows["case"].isin(held_out)]
        missing = sorted(set(all_cases) - set(held_out) - set(inner["case"]))
        if missing:
            raise ValueError(f"fold {fold['fold']}: no rule-subset scores of {fold['ensemble']} for {missing[:3]}")
        kept, subsets = choose_rules(rules, inner.drop(columns=["candidate", "source"]), refinement_settings["metric"],
                                     refinement_settings["apply"])
        table.append({**fold, "rules": ",".join(rules[j]["name"] for j in kept) or "none",
                      "refinement_metric": refinement_settings["metric"],
                      "refinement_inner_score": float(subsets.loc[subsets["chosen"], "score"].iloc[0])})
        print(f"fold {fold['fold']}: {fold['ensemble']}; rules {table[-1]['rules']}", flush=True)
    return pd.DataFrame(table)


def fold_of(folds_table: pd.DataFrame, case: str) -> dict:
    held = [f for f in folds_table.to_dict("records") if case in f["held_out"].split(",")]
    if len(held) != 1:
        raise ValueError(f"{case} is held out by {len(held)} folds of the nested table, not one")
    return held[0]


def nested_case(case: str, fold: dict, ensemble_settings: dict, refinement_settings: dict, oof_dir: Path,
                reference_path: Path, anatomy_path: Path | None, image_path: Path, out: Path) -> None:
    """Segment one case with its fold's ensemble and rules (a row of :func:`nested_rules`' table)."""
    by_name = {c.name: c for c in settings_candidates(ensemble_settings)}
    rules = refinement_settings["rules"]
    fold_rules = [r for r in rules if r["name"] in fold["rules"].split(",")]
    reference_image = read_image(reference_path)
    segmentation = read_candidate_segmentation(by_name[fold["ensemble"]], case, oof_dir,
                                               reference_image.GetSize()[::-1])
    seg_image = array_like(segmentation, reference_image)
    refined, _ = refine(segmentation, read_anatomy(case, anatomy_path, seg_image), image_array(read_image(image_path)),
                        seg_image.GetSpacing(), fold_rules, rules_class_ids(rules, refinement_settings["task"]), case,
                        seg_image.GetDirection())
    write_image(array_like(refined.astype(np.uint8), reference_image), out)


def nested_selection(ensemble_settings: dict, refinement_settings: dict, folds: list[list[str]], oof_dir: Path,
                     references_dir: Path, anatomy_paths: dict[str, Path | None], image_dir: Path, out_dir: Path,
                     out_table: Path, rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """The whole nested selection in one process (the workflow runs its steps as jobs: ``nested_ensembles``,
    ``score_refinements`` and ``nested_case`` per case, ``nested_selection``): write ``out_dir/<case>.nii.gz``
    and one row per fold (choices and their inner scores). ``rows``: every case's candidate scores when already
    computed (``score_ensembles``); else they are computed here."""
    cases = [case for fold in folds for case in fold]
    references_dir, image_dir = Path(references_dir), Path(image_dir)
    print(f"nested selection: {len(folds)} folds, {len(cases)} cases", flush=True)
    if rows is None:
        rows = score_candidates(settings_candidates(ensemble_settings), cases, oof_dir, references_dir,
                                ensemble_settings["classes"], Conventions.from_settings(ensemble_settings["conventions"]))
    ensembles = nested_ensembles(ensemble_settings, folds, rows)
    by_name = {c.name: c for c in settings_candidates(ensemble_settings)}
    subset_rows = []
    for case in cases:
        reference_image = read_image(references_dir / f"{case}.nii.gz")
        reference = image_array(reference_image)
        segmentations = [(name, "probabilities", array_like(read_candidate_segmentation(
            by_name[name], case, oof_dir, reference.shape), reference_image))
            for name in other_folds_choices(ensembles, case)]
        subset_rows += score_case_refinements(case, segmentations, anatomy_paths.get(case),
                                              image_dir / f"{case}.nii.gz", reference, refinement_settings)
    table = nested_rules(refinement_settings, ensembles, pd.DataFrame(subset_rows))
    for fold in table.to_dict("records"):
        for case in fold["held_out"].split(","):
            nested_case(case, fold, ensemble_settings, refinement_settings, oof_dir, references_dir / f"{case}.nii.gz",
                        anatomy_paths.get(case), image_dir / f"{case}.nii.gz", Path(out_dir) / f"{case}.nii.gz")
    write_table(table, out_table)
    return table


def nested_ensembles_entry(argv=None) -> None:
    from workflow_scripts import cli
    from workflow_scripts.io import read_json

    p = cli.parser("nested-ensembles", "Per fold of the nested selection, the ensemble chosen on the other folds' "
                   "cases.")
    cli.add_settings(p, "nested-ensembles")
    p.add_argument("--splits", required=True, help="splits_final.json: each fold's held-out cases under 'val'")
    p.add_argument("--case-scores", nargs="+", required=True, help="score-ensembles' <case>.tsv of every case")
    p.add_argument("--out", required=True, help="TSV: per fold its held-out cases and chosen ensemble")
    args = p.parse_args(argv)
    folds = [split["val"] for split in read_json(args.splits)]
    cases = [Path(p).name[: -len(".tsv")] for p in args.case_scores]
    if sorted(cases) != sorted(c for fold in folds for c in fold):
        raise SystemExit("error: --case-scores name other cases than the folds of --splits")
    selection = ensemble_selection(args.settings)
    try:
        rows = read_case_scores([Path(p) for p in args.case_scores], cases, settings_candidates(selection))
    except ValueError as err:
        raise SystemExit(f"error: {err}")
    table = nested_ensembles(selection, folds, rows)
    write_table(table, Path(args.out), float_format="%.17g")
    print(table.to_string(index=False))


def nested_selection_entry(argv=None) -> None:
    from workflow_scripts import cli

    p = cli.parser("nested-selection", "Per fold of the nested selection, the refinement rules chosen on the other "
                   "folds' cases segmented by the fold's ensemble.")
    cli.add_settings(p, "nested-selection")
    p.add_argument("--nested-ensembles", required=True, help="nested-ensembles' table")
    p.add_argument("--case-scores", nargs="+", required=True, help="score-refinements' <case>.tsv of every case")
    p.add_argument("--out-table", required=True, help="TSV: per fold the choices and their inner scores")
    args = p.parse_args(argv)
    ensembles = pd.read_csv(args.nested_ensembles, sep="\t")
    cases = [Path(p).name[: -len(".tsv")] for p in args.case_scores]
    settings = refinement_selection(args.settings)
    try:
        rows = read_refinement_scores([Path(p) for p in args.case_scores], cases, settings["rules"])
        table = nested_rules(settings, ensembles, rows)
    except ValueError as err:
        raise SystemExit(f"error: {err}")
    write_table(table, Path(args.out_table))


def nested_case_entry(argv=None) -> None:
    from workflow_scripts import cli

    p = cli.parser("nested-case", "Segment one out-of-fold case with the ensemble and rules its fold of the nested "
                   "selection chose.")
    cli.add_settings(p, "nested-case")
    p.add_argument("--folds", required=True, help="nested-selection's table")
    p.add_argument("--probabilities", nargs="+", required=True, help="<folder>/<configuration>/<case>.npz files")
    p.add_argument("--reference", required=True, help="the case's label: the grid to write on")
    p.add_argument("--anatomy", required=True, help="the case's anatomy map")
    p.add_argument("--image", required=True, help="the case's image")
    p.add_argument("--out", required=True, help="<case>.nii.gz")
    args = p.parse_args(argv)
    case = cli.one_case({"--reference": args.reference, "--image": args.image})
    if Path(args.out).name != f"{case}.nii.gz":
        raise SystemExit(f"error: --out {args.out} is not {case}.nii.gz")
    try:
        fold = fold_of(pd.read_csv(args.folds, sep="\t"), case)
    except ValueError as err:
        raise SystemExit(f"error: {err}")
    nested_case(case, fold, ensemble_selection(args.settings), refinement_selection(args.settings),
                cli.probability_root(args.probabilities, [case]), Path(args.reference), Path(args.anatomy),
                Path(args.image), Path(args.out))
    print(f"{case}: fold {fold['fold']}, {fold['ensemble']}, rules {fold['rules']}")
