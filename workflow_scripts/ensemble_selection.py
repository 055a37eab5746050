"""Choice of the ensemble under cross-validation: every candidate scored on the out-of-fold probabilities.

Candidates are each non-empty subset of the configured full-label members (with their weights), each combined
with every fusion of the partial models: left out or fused with each configured strategy. nnU-Net's
``find_best_configuration`` tries pairs only; here the table holds every combination and its score.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.ensemble import fuse_class
from workflow_scripts.io import (image_array, labels_from_probabilities, read_image, read_probabilities, write_json,
                                  write_table)
from workflow_scripts.metrics import Conventions, dilated_dice, overlap_metrics, pinkcc_score, union_crop

SELECTION_METRICS = ("pinkcc", "dice")


@dataclass(frozen=True)
class Candidate:
    members: tuple[tuple[str, float], ...]  # (configuration, weight)
    fusions: tuple[tuple[str, int, str], ...]  # (configuration, into label value, strategy)

    @property
    def name(self) -> str:
        name = "+".join(m for m, _ in self.members)
        for configuration, into, strategy in self.fusions:
            name += f" | {configuration} {strategy} into {into}"
        return name

    @property
    def n_configurations(self) -> int:
        return len(self.members) + len(self.fusions)

    def as_selection(self) -> dict:
        return {"members": dict(self.members),
                "fusions": [{"configuration": c, "into": into, "strategy": s} for c, into, s in self.fusions]}


def enumerate_candidates(members: dict[str, float], fusions: list[dict], strategies: list[str],
                         select: bool) -> list[Candidate]:
    """``fusions``: dicts with ``configuration``, ``into`` (label value) and ``strategy`` (used when not
    ``select``ing). Without selection the one candidate is the configured ensemble."""
    if not select:
        return [Candidate(tuple(members.items()),
                          tuple((f["configuration"], f["into"], f["strategy"]) for f in fusions))]
    names = list(members)
    subsets = [combo for k in range(1, len(names) + 1) for combo in itertools.combinations(names, k)]
    options = [[None] + [(f["configuration"], f["into"], s) for s in strategies] for f in fusions]
    return [Candidate(tuple((m, members[m]) for m in subset), tuple(f for f in chosen if f is not None))
            for subset in subsets for chosen in itertools.product(*options)]


def combine(candidate: Candidate, maps: dict[str, tuple[np.ndarray, list[int]]]) -> tuple[np.ndarray, list[int]]:
    """The candidate's probabilities from the configurations' maps of one case (already in memory)."""
    total_weight = sum(w for _, w in candidate.members)
    labels = maps[candidate.members[0][0]][1]
    probabilities = sum(maps[m][0] * (w / total_weight) for m, w in candidate.members)
    for configuration, into, strategy in candidate.fusions:
        partial, partial_labels = maps[configuration]
        probabilities = fuse_class(probabilities, labels, partial, partial_labels, into, strategy)
    return probabilities, labels


def candidate_segmentation(candidate: Candidate, maps: dict[str, tuple[np.ndarray, list[int]]], case: str,
                           grid_shape: tuple[int, ...]) -> np.ndarray:
    """The candidate's label map of one case (uint8, source label values), checked to lie on the reference grid."""
    probabilities, labels = combine(candidate, maps)
    if probabilities.shape[1:] != tuple(grid_shape):
        raise ValueError(f"{case}: out-of-fold probabilities {probabilities.shape[1:]} are not on the "
                         f"reference grid {tuple(grid_shape)}")
    return labels_from_probabilities(probabilities, labels)


def read_candidate_segmentation(candidate: Candidate, case: str, oof_dir: Path,
                                grid_shape: tuple[int, ...]) -> np.ndarray:
    """One case's label map from the candidate, its configurations' out-of-fold probabilities read from disk."""
    maps = {name: read_probabilities(Path(oof_dir) / name / f"{case}.npz") for name in needed_configurations([candidate])}
    return candidate_segmentation(candidate, maps, case, grid_shape)


def case_rows(case: str, reference: np.ndarray, segmentation: np.ndarray, classes: dict[str, int],
              conventions: Conventions) -> list[dict]:
    """Overlap and dilated Dice per class: what the selection metrics need, without the distances."""
    rows = []
    for name, label in classes.items():
        ref, pred = reference == label, segmentation == label
        crop = union_crop(ref, pred)
        if crop is not None:
            ref, pred = ref[crop], pred[crop]
        row = overlap_metrics(ref, pred, 0.0, conventions)
        row["dice_dilated"] = dilated_dice(ref, pred, conventions.both_empty)
        rows.append({"case": case, "class": name, **row})
    return rows


def candidate_score(rows: pd.DataFrame, metric: str) -> float:
    if metric == "pinkcc":
        return pinkcc_score(rows.to_dict("records"))["pinkcc_score"]
    per_case = rows.groupby("case")["dice"].mean()  # mean over classes, then over cases
    return float(per_case.mean()) if len(per_case) else math.nan


def needed_configurations(candidates: list[Candidate]) -> list[str]:
    return sorted({m for c in candidates for m, _ in c.members} | {f[0] for c in candidates for f in c.fusions})


def score_case(candidates: list[Candidate], case: str, oof_dir: Path, reference_path: Path,
               classes: dict[str, int], conventions: Conventions) -> list[dict]:
    """One case's rows for every candidate; each configuration's map of the case is read once."""
    maps = {name: read_probabilities(Path(oof_dir) / name / f"{case}.npz") for name in needed_configurations(candidates)}
    reference = image_array(read_image(reference_path))
    rows = []
    for candidate in candidates:
        segmentation = candidate_segmentation(candidate, maps, case, reference.shape)
        rows += [{"candidate": candidate.name, **r} for r in case_rows(case, reference, segmentation, classes, conventions)]
    return rows


def score_candidates(candidates: list[Candidate], cases: list[str], oof_dir: Path, references_dir: Path,
                     classes: dict[str, int], conventions: Conventions) -> pd.DataFrame:
    """Per candidate, case and class rows, one case after the other (the workflow scores cases in parallel jobs,
    ``score_ensembles``, and reads their tables)."""
    rows = []
    for i, case in enumerate(cases, 1):
        rows += score_case(candidates, case, oof_dir, Path(references_dir) / f"{case}.nii.gz", classes, conventions)
        print(f"[{i}/{len(cases)}] {case}: {len(candidates)} candidate(s) scored", flush=True)
    return pd.DataFrame(rows)


def read_case_scores(paths: list[Path], cases: list[str], candidates: list[Candidate]) -> pd.DataFrame:
    """The ``score_ensembles`` tables of ``cases``, checked to hold every candidate of every case."""
    if len(set(cases)) != len(cases):
        raise ValueError(f"cases given more than once: {sorted({c for c in cases if cases.count(c) > 1})}")
    rows = pd.concat([pd.read_csv(p, sep="\t") for p in paths], ignore_index=True)
    expected = {(c.name, case) for c in candidates for case in cases}
    found = set(zip(rows["candidate"], rows["case"]))
    if found != expected:
        missing, extra = sorted(expected - found)[:3], sorted(found - expected)[:3]
        raise ValueError(f"the case score tables do not match the candidates and cases (missing {missing}, "
                         f"unexpected {extra}): were they written with other ensemble settings?")
    return rows


def rank_candidates(candidates: list[Candidate], rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per candidate, best first: highest score, then fewer configurations, then configured order."""
    if metric not in SELECTION_METRICS:
        raise ValueError(f"unknown selection metric '{metric}'; choose one of {SELECTION_METRICS}")
    table = []
    for order, candidate in enumerate(candidates):
        own = rows[rows["candidate"] == candidate.name]
        entry = {"candidate": candidate.name, "members": ",".join(f"{m}:{w:g}" for m, w in candidate.members),
                 "fusions": ",".join(f"{c}:{s}>{into}" for c, into, s in candidate.fusions) or "-",
                 "n_configurations": candidate.n_configurations, "metric": metric,
                 "score": candidate_score(own, metric), "order": order}
        for name, group in own.groupby("class", sort=False):
            entry[f"dice_{name}"] = float(group["dice"].mean())
        table.append(entry)
    table = pd.DataFrame(table)
    table["sort_score"] = table["score"].fillna(-math.inf)
    table = table.sort_values(["sort_score", "n_configurations", "order"], ascending=[False, True, True])
    table = table.drop(columns=["sort_score", "order"]).reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    table["selected"] = table["rank"] == 1
    return table


def settings_candidates(settings: dict) -> list[Candidate]:
    return enumerate_candidates(settings["members"], settings["fusions"], settings["strategies"], settings["select"])


def select_ensemble(settings: dict, cases: list[str], oof_dir: Path | None, references_dir: Path | None,
                    out_table: Path, out_selection: Path, rows: pd.DataFrame | None = None) -> dict:
    """``settings``: members, fusions, select, strategies, metric, classes, conventions (evaluation keys).
    ``rows``: the cases' scores when already computed (``score_ensembles``); else they are computed here."""
    candidates = settings_candidates(settings)
    print(f"{len(candidates)} candidate ensemble(s) on {len(cases)} out-of-fold case(s), "
          f"metric {settings['metric']}", flush=True)
    if rows is None:
        rows = score_candidates(candidates, cases, oof_dir, references_dir, settings["classes"],
                                Conventions.from_settings(settings["conventions"]))
    table = rank_candidates(candidates, rows, settings["metric"])
    best = next(c for c in candidates if c.name == table.loc[0, "candidate"])
    selection = {"candidate": best.name, "metric": settings["metric"], "score": float(table.loc[0, "score"]),
                 "selected_among": len(candidates), **best.as_selection()}
    write_table(table, out_table)
    write_json(selection, out_selection)
    print(f"selected: {best.name} ({settings['metric']} {selection['score']:.4f})", flush=True)
    return selection


def score_ensembles_entry(argv=None) -> None:
    from workflow_scripts import cli
    from workflow_scripts.settings import ensemble_selection

    p = cli.parser("score-ensembles", "Score every candidate ensemble on one out-of-fold case.")
    cli.add_settings(p, "score-ensembles")
    p.add_argument("--reference", required=True, help="the case's label, <case>.nii.gz")
    p.add_argument("--probabilities", nargs="+", required=True,
                   help="<folder>/<configuration>/<case>.npz of every configuration the candidates use")
    p.add_argument("--out", required=True, help="TSV: a row per candidate and class")
    args = p.parse_args(argv)
    _, (case,) = cli.case_folder([args.reference], "--reference")
    selection = ensemble_selection(args.settings)
    candidates = settings_candidates(selection)
    rows = score_case(candidates, case, cli.probability_root(args.probabilities, [case]), Path(args.reference),
                      selection["classes"], Conventions.from_settings(selection["conventions"]))
    write_table(pd.DataFrame(rows), Path(args.out), float_format="%.17g")
    print(f"{case}: {len(candidates)} candidate(s) scored")


def select_ensemble_entry(argv=None) -> None:
    from workflow_scripts import cli
    from workflow_scripts.settings import ensemble_selection

    p = cli.parser("select-ensemble", "Rank every candidate ensemble on the out-of-fold cases' scores; choose one.")
    cli.add_settings(p, "select-ensemble")
    p.add_argument("--case-scores", nargs="+", required=True, help="score-ensembles' <case>.tsv of every case")
    p.add_argument("--out-table", required=True)
    p.add_argument("--out-selection", required=True)
    args = p.parse_args(argv)
    cases = [Path(p).name[: -len(".tsv")] for p in args.case_scores]
    selection = ensemble_selection(args.settings)
    try:
        rows = read_case_scores([Path(p) for p in args.case_scores], cases, settings_candidates(selection))
    except ValueError as err:
        raise SystemExit(f"error: {err}")
    select_ensemble(selection, cases, None, None, Path(args.out_table), Path(args.out_selection), rows)
