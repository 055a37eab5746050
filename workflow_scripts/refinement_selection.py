"""Which refinement rules to apply, decided on the out-of-fold ensemble as nnU-Net decides its post-processing.

Each rule removes whole connected components of the ensemble's label map, judged on the component alone, so
what a set of rules removes is the union of what each removes alone. Per case every rule is run once; every
subset of rules is then scored from those removals. With ``apply: if_improves`` rules are taken greedily in
their configured order, each kept only when it raises the out-of-fold score; with ``always`` all are kept.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.ensemble_selection import candidate_score, case_rows
from workflow_scripts.io import image_array, read_anatomy, read_image, write_json, write_table
from workflow_scripts.metrics import Conventions, union_crop
from workflow_scripts.refinement import refine, rules_class_ids

APPLY_MODES = ("always", "if_improves")
MAX_RULES = 8  # every subset is scored: 2^8 subsets per case at most


def rule_subsets(n_rules: int) -> list[tuple[int, ...]]:
    if n_rules > MAX_RULES:
        raise ValueError(f"refinement.apply if_improves scores every subset of rules: at most {MAX_RULES} rules, "
                         f"got {n_rules}")
    return [s for k in range(n_rules + 1) for s in itertools.combinations(range(n_rules), k)]


def case_subset_rows(case: str, seg_image, anatomy_path: Path | None, image_path: Path, reference: np.ndarray,
                     rules: list[dict], class_ids: dict[str, int] | None, classes: dict[str, int],
                     conventions: Conventions) -> list[dict]:
    """One case's rows for every rule subset: each rule run once on the segmentation (a SimpleITK image), each
    subset removing the union of what its rules remove."""
    segmentation = image_array(seg_image)
    anatomy = read_anatomy(case, anatomy_path, seg_image)
    image = image_array(read_image(image_path))
    removed_by = []
    for rule in rules:
        refined, _ = refine(segmentation, anatomy, image, seg_image.GetSpacing(), [rule], class_ids, case,
                            seg_image.GetDirection())
        removed_by.append(refined != segmentation)
    del anatomy, image
    # Refinement only removes voxels: everything happens inside the box of reference and ensemble.
    crop = union_crop(reference > 0, segmentation > 0) or tuple(slice(0, 0) for _ in reference.shape)
    segmentation, reference = segmentation[crop], reference[crop]
    removed_by = [r[crop] for r in removed_by]
    rows = []
    for subset in rule_subsets(len(rules)):
        refined = segmentation.copy()
        for k in subset:
            refined[removed_by[k]] = 0
        key = ",".join(rules[k]["name"] for k in subset) or "none"
        rows += [{"rules": key, **r} for r in case_rows(case, reference, refined, classes, conventions)]
    return rows


def score_subsets(cases: list[str], segmentation_dir: Path, anatomy_paths: dict[str, Path | None],
                  image_dir: Path, reference_dir: Path, rules: list[dict], anatomy_task: str,
                  classes: dict[str, int], conventions: Conventions) -> pd.DataFrame:
    """Per rule subset, case and class: overlap and dilated Dice after removing what the subset removes."""
    class_ids = rules_class_ids(rules, anatomy_task)
    n_subsets = len(rule_subsets(len(rules)))
    rows = []
    for i, case in enumerate(cases, 1):
        seg_image = read_image(Path(segmentation_dir) / f"{case}.nii.gz")
        reference = image_array(read_image(Path(reference_dir) / f"{case}.nii.gz"))
        rows += case_subset_rows(case, seg_image, anatomy_paths.get(case), Path(image_dir) / f"{case}.nii.gz",
                                 reference, rules, class_ids, classes, conventions)
        print(f"[{i}/{len(cases)}] {case}: {n_subsets} rule subset(s) scored", flush=True)
    return pd.DataFrame(rows)


def choose_rules(rules: list[dict], rows: pd.DataFrame, metric: str, apply: str) -> tuple[list[int], pd.DataFrame]:
    """The chosen rule indices and one row per subset (score, per-class Dice, whether the greedy path or the
    choice visited it)."""
    if apply not in APPLY_MODES:
        raise ValueError(f"unknown refinement.apply '{apply}'; choose one of {APPLY_MODES}")
    subsets = rule_subsets(len(rules))
    names = {s: ",".join(rules[k]["name"] for k in s) or "none" for s in subsets}
    scores = {s: candidate_score(rows[rows["rules"] == names[s]], metric) for s in subsets}
    if apply == "always":
        chosen = tuple(range(len(rules)))
        steps = []
    else:
        chosen, steps = (), []
        for k in range(len(rules)):
            trial = chosen + (k,)
            kept = scores[trial] > scores[chosen]  # strictly better, as nnU-Net's post-processing
            steps.append({"rule": rules[k]["name"], "score_without": scores[chosen], "score_with": scores[trial],
                          "kept": kept})
            if kept:
                chosen = trial
    table = []
    for s in subsets:
        own = rows[rows["rules"] == names[s]]
        entry = {"rules": names[s], "n_rules": len(s), "metric": metric, "score": scores[s], "chosen": s == chosen}
        for name, group in own.groupby("class", sort=False):
            entry[f"dice_{name}"] = float(group["dice"].mean())
        table.append(entry)
    return list(chosen), pd.DataFrame(table)


def score_case_refinements(case: str, segmentations: list[tuple[str, str, object]], anatomy_path: Path | None,
                           image_path: Path, reference: np.ndarray, settings: dict) -> list[dict]:
    """One case's rows for every rule subset on each of ``segmentations`` ((candidate, source, SimpleITK image)):
    ``source`` is ``ensemble`` for the study's out-of-fold ensemble, ``probabilities`` for a candidate rebuilt from
    the configurations' maps (the nested selection's). A label map equal to one already scored is not scored again."""
    rules = settings["rules"]
    class_ids = rules_class_ids(rules, settings["task"])
    conventions = Conventions.from_settings(settings["conventions"])
    scored: list[tuple[np.ndarray, list[dict]]] = []
    out = []
    for candidate, source, seg_image in segmentations:
        array = image_array(seg_image)
        rows = next((r for a, r in scored if np.array_equal(a, array)), None)
        if rows is None:
            rows = case_subset_rows(case, seg_image, anatomy_path, image_path, reference, rules, class_ids,
                                    settings["classes"], conventions)
            scored.append((array, rows))
        out += [{"candidate": candidate, "source": source, **r} for r in rows]
    return out


def read_refinement_scores(paths: list[Path], cases: list[str], rules: list[dict]) -> pd.DataFrame:
    """The ``score_refinements`` tables of ``cases``, checked to hold every rule subset of every case."""
    if len(set(cases)) != len(cases):
        raise ValueError(f"cases given more than once: {sorted({c for c in cases if cases.count(c) > 1})}")
    rows = pd.concat([pd.read_csv(p, sep="\t") for p in paths], ignore_index=True)
    names = {",".join(rules[k]["name"] for k in s) or "none" for s in rule_subsets(len(rules))}
    ensemble = rows[rows["source"] == "ensemble"]
    expected = {(name, case) for name in names for case in cases}
    found = set(zip(ensemble["rules"], ensemble["case"]))
    if found != expected or not set(rows["case"]) <= set(cases):
        missing, extra = sorted(expected - found)[:3], sorted(found - expected)[:3]
        raise ValueError(f"the refinement score tables do not match the rules and cases (missing {missing}, "
                         f"unexpected {extra}): were they written with other refinement settings?")
    return rows


def select_refinement(settings: dict, rows: pd.DataFrame, out_table: Path, out_selection: Path) -> dict:
    """``settings``: rules, apply, metric, task, classes, conventions (evaluation keys). ``rows``: every case's
    rule-subset scores on the out-of-fold ensemble (:func:`score_subsets`, or ``score_refinements`` tables)."""
    rules = settings["rules"]
    print(f"refinement: {len(rules)} rule(s), apply {settings['apply']}, metric {settings['metric']}, "
          f"{rows['case'].nunique()} out-of-fold case(s)", flush=True)
    chosen, table = choose_rules(rules, rows, settings["metric"], settings["apply"])
    none_score = float(table.loc[table["rules"] == "none", "score"].iloc[0])
    chosen_score = float(table.loc[table["chosen"], "score"].iloc[0])
    selection = {"apply": settings["apply"], "metric": settings["metric"], "score_without": none_score,
                 "score_with": chosen_score, "rules": [rules[k] for k in chosen],
                 "left_out": [r["name"] for k, r in enumerate(rules) if k not in chosen]}
    write_table(table, out_table)
    write_json(selection, out_selection)
    print(f"rules applied: {[r['name'] for r in selection['rules']] or 'none'} ({settings['metric']} "
          f"{none_score:.4f} -> {chosen_score:.4f})", flush=True)
    return selection


def other_folds_choices(nested_ensembles: pd.DataFrame, case: str) -> list[str]:
    """The ensembles chosen by the nested selection's folds that do not hold ``case``: those folds choose their
    rules on this case, segmented by their ensemble."""
    return sorted({row.ensemble for row in nested_ensembles.itertuples() if case not in row.held_out.split(",")})


def score_refinements_entry(argv=None) -> None:
    from workflow_scripts import cli
    from workflow_scripts.ensemble_selection import read_candidate_segmentation, settings_candidates
    from workflow_scripts.io import array_like, read_json
    from workflow_scripts.settings import ensemble_selection, refinement_selection

    p = cli.parser("score-refinements", "Score every subset of the refinement rules on one out-of-fold case: on "
                   "the study's ensemble and on the ensembles the nested selection's other folds chose.")
    cli.add_settings(p, "score-refinements")
    p.add_argument("--segmentation", required=True, help="the case's out-of-fold ensemble, <case>.nii.gz")
    p.add_argument("--selection", required=True, help="select-ensemble's JSON: the study's ensemble")
    p.add_argument("--nested-ensembles", required=True, help="nested-ensembles' table: each fold's ensemble")
    p.add_argument("--probabilities", nargs="+", required=True,
                   help="<folder>/<configuration>/<case>.npz of every configuration the candidates use")
    p.add_argument("--anatomy", required=True, help="the case's anatomy map")
    p.add_argument("--image", required=True, help="the case's image")
    p.add_argument("--reference", required=True, help="the case's label")
    p.add_argument("--out", required=True, help="TSV: a row per segmentation, rule subset and class")
    args = p.parse_args(argv)
    case = cli.one_case({"--segmentation": args.segmentation, "--image": args.image, "--reference": args.reference})
    reference_image = read_image(args.reference)
    reference = image_array(reference_image)
    settings = refinement_selection(args.settings)
    by_name = {c.name: c for c in settings_candidates(ensemble_selection(args.settings))}
    segmentations = [(read_json(args.selection)["candidate"], "ensemble", read_image(args.segmentation))]
    oof_dir = cli.probability_root(args.probabilities, [case])
    nested = pd.read_csv(args.nested_ensembles, sep="\t")
    for name in other_folds_choices(nested, case):
        segmentation = read_candidate_segmentation(by_name[name], case, oof_dir, reference.shape)
        segmentations.append((name, "probabilities", array_like(segmentation, reference_image)))
    rows = score_case_refinements(case, segmentations, Path(args.anatomy), Path(args.image), reference, settings)
    write_table(pd.DataFrame(rows), Path(args.out), float_format="%.17g")
    print(f"{case}: {len(rule_subsets(len(settings['rules'])))} rule subset(s) scored on "
          f"{', '.join(f'{name} ({source})' for name, source, _ in segmentations)}")


def select_refinement_entry(argv=None) -> None:
    from workflow_scripts import cli
    from workflow_scripts.settings import refinement_selection

    p = cli.parser("select-refinement", "Choose the refinement rules on the out-of-fold ensemble from the cases' "
                   "rule-subset scores: keep the rules that help (or all).")
    cli.add_settings(p, "select-refinement")
    p.add_argument("--case-scores", nargs="+", required=True, help="score-refinements' <case>.tsv of every case")
    p.add_argument("--out-table", required=True)
    p.add_argument("--out-selection", required=True)
    args = p.parse_args(argv)
    cases = [Path(p).name[: -len(".tsv")] for p in args.case_scores]
    settings = refinement_selection(args.settings)
    try:
        rows = read_refinement_scores([Path(p) for p in args.case_scores], cases, settings["rules"])
    except ValueError as err:
        raise SystemExit(f"error: {err}")
    ensemble = rows[rows["source"] == "ensemble"].drop(columns=["candidate", "source"])
    select_refinement(settings, ensemble, Path(args.out_table), Path(args.out_selection))
