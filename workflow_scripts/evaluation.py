"""Metrics of every stage per case and class, their aggregates, paired stage comparisons and report figures."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import stats

from workflow_scripts.io import pyplot, write_figure, write_table
from workflow_scripts.metrics import Conventions, class_metrics, nsd_column, pinkcc_score

# Metrics aggregated and compared in the report, with the direction that is better.
HIGHER_IS_BETTER = {"dice": True, "iou": True, "precision": True, "recall": True, "hd95_mm": False,
                    "assd_mm": False, "lesion_f1": True, "lesion_dice": True, "dice_dilated": True,
                    "volume_difference_ml": None}
COMPARED = ["dice", "hd95_mm", "lesion_f1"]


def summary_metrics(conventions: Conventions) -> list[str]:
    return list(HIGHER_IS_BETTER) + [nsd_column(t) for t in conventions.nsd_tolerances_mm]


def _spacing_zyx(image: sitk.Image) -> tuple[float, ...]:
    return tuple(reversed(image.GetSpacing()))


def check_same_grid(case: str, reference: sitk.Image, prediction: sitk.Image, stage: str) -> None:
    if reference.GetSize() != prediction.GetSize() or not np.allclose(reference.GetSpacing(), prediction.GetSpacing(),
                                                                      rtol=1e-3):  # QC's default spacing_tolerance
        raise ValueError(f"{stage}/{case}: prediction grid (size {prediction.GetSize()}, spacing "
                         f"{prediction.GetSpacing()}) differs from the reference grid (size {reference.GetSize()}, "
                         f"spacing {reference.GetSpacing()}); predictions must be written on the input grid")


def evaluate_case(case: str, reference_path: Path, prediction_path: Path, classes: dict[str, int],
                  conventions: Conventions, stage: str = "") -> list[dict]:
    reference_image = sitk.ReadImage(str(reference_path))
    prediction_image = sitk.ReadImage(str(prediction_path))
    check_same_grid(case, reference_image, prediction_image, stage)
    reference = sitk.GetArrayViewFromImage(reference_image)
    prediction = sitk.GetArrayViewFromImage(prediction_image)
    spacing = _spacing_zyx(reference_image)
    rows = []
    for name, label in classes.items():
        row = {"case": case, "class": name, "label": label}
        row.update(class_metrics(reference == label, prediction == label, spacing, conventions))
        rows.append(row)
    return rows


def evaluate_stage(split: str, stage: str, cases: list[str], prediction_dir: Path, reference_dir: Path,
                   classes: dict[str, int], conventions: Conventions) -> pd.DataFrame:
    rows = []
    for i, case in enumerate(cases, 1):
        rows += evaluate_case(case, Path(reference_dir) / f"{case}.nii.gz", Path(prediction_dir) / f"{case}.nii.gz",
                              classes, conventions, stage)
        print(f"[{i}/{len(cases)}] {split}/{stage}/{case} evaluated", flush=True)
    table = pd.DataFrame(rows)
    table.insert(0, "stage", stage)
    table.insert(0, "split", split)
    table["convention"] = conventions.describe()
    return table


def aggregate(metrics: pd.DataFrame, metric_names: list[str]) -> pd.DataFrame:
    """Mean, standard deviation, median, quartiles, IQR and count per split, stage, class and metric
    (NaN values, e.g. distances with an empty mask under the ``nan`` convention, are left out and not counted)."""
    long = metrics.melt(id_vars=["split", "stage", "case", "class"], value_vars=metric_names, var_name="metric")
    grouped = long.groupby(["split", "stage", "class", "metric"], sort=False)["value"]
    summary = grouped.agg(mean="mean", std="std", median="median", q1=lambda v: v.quantile(0.25),
                          q3=lambda v: v.quantile(0.75), n="count").reset_index()
    summary["iqr"] = summary["q3"] - summary["q1"]
    return summary


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count as a test)."""
    valid = [(p, i) for i, p in enumerate(p_values) if not math.isnan(p)]
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(valid)):
        running = max(running, min(1.0, (len(valid) - rank) * p))
        adjusted[i] = running
    return adjusted


def wilcoxon_signed_rank_p(diff: np.ndarray) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test of ``diff`` (zeros dropped, ties given average ranks),
    exact: the null distribution of the positive rank sum over all 2^n sign patterns, counted by dynamic
    programming over the (half-integer) ranks. This is the test scipy's ``wilcoxon`` runs by default for small
    samples with ties or zeros, which it enumerates one sign pattern at a time in Python (0.2 s a test at n = 12,
    100 s for the toy study's comparisons); for larger samples scipy approximates or samples where this stays exact.
    """
    nonzero = diff[diff != 0]
    if not nonzero.size:
        return math.nan
    doubled = np.rint(2 * stats.rankdata(np.abs(nonzero))).astype(np.int64)  # average ranks are half-integers
    null = np.zeros(int(doubled.sum()) + 1)
    null[0] = 1.0
    for rank in doubled:  # each rank joins the positive sum or not, with probability 1/2
        null[rank:] = 0.5 * (null[rank:] + null[:-rank].copy())
        null[:rank] *= 0.5
    observed = int(doubled[nonzero > 0].sum())
    return float(min(1.0, 2 * min(null[:observed + 1].sum(), null[observed:].sum())))


def paired_comparison(a: np.ndarray, b: np.ndarray) -> dict:
    """Paired tests of b - a: Wilcoxon signed-rank with the matched-pairs rank-biserial correlation, and a
    paired t-test only where Shapiro-Wilk (n >= 3) does not reject normal differences (its p in ``shapiro_p``,
    the choice in ``differences_normal``); Cohen's d_z always."""
    diff = b - a
    row = {"n_pairs": int(diff.size), "mean_difference": float(diff.mean()) if diff.size else math.nan,
           "median_difference": float(np.median(diff)) if diff.size else math.nan,
           "wilcoxon_p": math.nan, "rank_biserial": math.nan, "t_test_p": math.nan, "cohens_dz": math.nan,
           "shapiro_p": math.nan, "differences_normal": False}
    nonzero = diff[diff != 0]
    if nonzero.size:
        ranks = stats.rankdata(np.abs(nonzero))
        row["rank_biserial"] = float((ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum()) / ranks.sum())
        row["wilcoxon_p"] = wilcoxon_signed_rank_p(diff)
    if diff.size >= 3 and diff.std(ddof=1) > 0:
        row["cohens_dz"] = float(diff.mean() / diff.std(ddof=1))
        row["shapiro_p"] = float(stats.shapiro(diff).pvalue)
        row["differences_normal"] = bool(row["shapiro_p"] > 0.05)
        if row["differences_normal"]:
            row["t_test_p"] = float(stats.ttest_rel(b, a).pvalue)
    elif diff.size and not diff.any():
        row["wilcoxon_p"] = 1.0
    return row


def compare_stages(metrics: pd.DataFrame, metric_names: list[str]) -> pd.DataFrame:
    """Every pair of stages per metric, split and class, tested on the cases whose reference holds the class (those
    the figures show) where both stages have a value. Lesion-free cases score 1 or 0 by convention whatever a
    stage does, so they are counted apart: how many, and how many of them each stage kept empty. Holm's correction
    runs over the pairs of one metric, split and class (``holm_family``, of ``holm_pairs`` pairs; a pair
    without a test, NaN, does not count)."""
    rows = []
    for metric in metric_names:
        for (split, name), subset in metrics.groupby(["split", "class"], sort=False):
            holding, free = subset[subset["reference_voxels"] > 0], subset[subset["reference_voxels"] == 0]
            wide = holding.pivot_table(index="case", columns="stage", values=metric, dropna=False)
            stages = list(subset["stage"].unique())
            free_cases = {s: set(free.loc[free["stage"] == s, "case"]) for s in stages}
            kept_empty = {s: set(free.loc[(free["stage"] == s) & (free["predicted_voxels"] == 0), "case"])
                          for s in stages}
            family = []
            for first, second in itertools.combinations(stages, 2):
                pair = wide.reindex(columns=[first, second]).dropna()
                row = {"split": split, "class": name, "metric": metric, "stage_a": first, "stage_b": second}
                row.update(paired_comparison(pair[first].to_numpy(float), pair[second].to_numpy(float)))
                higher = HIGHER_IS_BETTER.get(metric, True)
                if row["mean_difference"] == row["mean_difference"] and row["mean_difference"] != 0 and higher is not None:
                    row["better"] = second if (row["mean_difference"] > 0) == higher else first
                else:
                    row["better"] = ""
                shared = free_cases[first] & free_cases[second]
                row.update(lesion_free_cases=len(shared), lesion_free_kept_empty_a=len(kept_empty[first] & shared),
                           lesion_free_kept_empty_b=len(kept_empty[second] & shared))
                family.append(row)
            for row, w, t in zip(family, holm([r["wilcoxon_p"] for r in family]), holm([r["t_test_p"] for r in family])):
                row.update(wilcoxon_p_holm=w, t_test_p_holm=t, holm_family=f"{metric}, {split}, {name}",
                           holm_pairs=len(family))
            rows += family
    return pd.DataFrame(rows)


def pinkcc_table(metrics: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (split, stage), group in metrics.groupby(["split", "stage"], sort=False):
        rows.append({"split": split, "stage": stage, "classes": ",".join(group["class"].unique()),
                     **pinkcc_score(group.to_dict("records"))})
    return pd.DataFrame(rows)


def worst_cases(metrics: pd.DataFrame, per_stage: int) -> pd.DataFrame:
    """The lowest-Dice cases of every split, stage and class, with the files to open."""
    rows = metrics.dropna(subset=["dice"]).sort_values("dice").groupby(["split", "stage", "class"], sort=False)
    worst = rows.head(per_stage).sort_values(["split", "stage", "class", "dice"])
    columns = ["split", "stage", "class", "case", "dice", "hd95_mm", "lesions_missed", "lesions_false"]
    worst = worst[columns].copy()
    worst["prediction"] = [f"results/predictions/{s}/{st}/{c}.nii.gz"
                           for s, st, c in zip(worst["split"], worst["stage"], worst["case"])]
    return worst


def metric_panels(metrics: pd.DataFrame, metric: str) -> list[dict]:
    """Per split and class: each stage's values of ``metric`` over the cases whose reference holds the class, and
    the lesion-free cases apart (they score 1 or NaN by convention whatever the stage does): their count and how
    many of them each stage kept empty."""
    panels = []
    for split in metrics["split"].unique():
        for name in metrics["class"].unique():
            subset = metrics[(metrics["split"] == split) & (metrics["class"] == name)]
            holding, free = subset[subset["reference_voxels"] > 0], subset[subset["reference_voxels"] == 0]
            stages = list(subset["stage"].unique())
            panels.append({"split": split, "class": name, "stages": stages,
                           "values": [holding.loc[holding["stage"] == s, metric].dropna().to_numpy() for s in stages],
                           "cases": holding["case"].nunique(), "lesion_free": free["case"].nunique(),
                           "kept_empty": [int((free.loc[free["stage"] == s, "predicted_voxels"] == 0).sum())
                                          for s in stages]})
    return panels


def plot_metrics(metrics: pd.DataFrame, metric_names: list[str], out: Path) -> None:
    """Per metric (rows), split and class (columns), ``metric_panels`` drawn: points over a box per stage, n in
    the tick label, the lesion-free cases counted in the title."""
    plt = pyplot()
    n_panels = len(metrics["split"].unique()) * len(metrics["class"].unique())
    fig, axes = plt.subplots(len(metric_names), n_panels, figsize=(4.5 * n_panels, 3.6 * len(metric_names)),
                             squeeze=False)
    jitter = np.random.default_rng(0)
    for row, metric in enumerate(metric_names):
        for ax, panel in zip(axes[row], metric_panels(metrics, metric)):
            values = panel["values"]
            ax.boxplot(values, tick_labels=[f"{s}\nn={len(v)}" for s, v in zip(panel["stages"], values)],
                       showfliers=False)
            for k, v in enumerate(values, 1):
                ax.scatter(k + jitter.uniform(-0.12, 0.12, len(v)), v, s=12, alpha=0.7, zorder=3)
            free = panel["lesion_free"]
            ax.set_title(f"{panel['split']}: {panel['class']} ({panel['cases']} cases with it; {free} lesion-free"
                         + (f", kept empty: {'/'.join(map(str, panel['kept_empty']))}" if free else "") + ")",
                         fontsize=9)
            ax.set_ylabel(metric)
            ax.tick_params(axis="x", rotation=45, labelsize=8)
    fig.tight_layout()
    write_figure(fig, out)


def flag_selection_bias(tables: dict[str, pd.DataFrame], biased: list[str]) -> None:
    """``selection_biased``: a row's out-of-fold score (or a comparison with it) belongs to a stage chosen on those
    very cases, so it is optimistic; the nested stage (``oof_nested``) is the unbiased estimate beside it."""
    for name in ("summary", "pinkcc"):
        table = tables[name]
        table["selection_biased"] = (table["split"] == "oof") & table["stage"].isin(biased)
    table = tables["comparisons"]
    if len(table):
        table["selection_biased"] = (table["split"] == "oof") & (table["stage_a"].isin(biased)
                                                                 | table["stage_b"].isin(biased))


def write_summary(case_tables: list[Path], out_dir: Path, conventions: Conventions,
                  worst_per_stage: int, selection_biased: list[str] = ()) -> dict[str, pd.DataFrame]:
    """Aggregates, stage comparisons, PINKCC scores, worst cases (TSV) and the box plot figure in ``out_dir``;
    ``selection_biased``: stages whose out-of-fold rows are flagged (:func:`flag_selection_bias`)."""
    metrics = pd.concat([pd.read_csv(p, sep="\t") for p in case_tables], ignore_index=True)
    names = [m for m in summary_metrics(conventions) if m in metrics.columns]
    tables = {"summary": aggregate(metrics, names), "comparisons": compare_stages(metrics, COMPARED),
              "pinkcc": pinkcc_table(metrics), "worst_cases": worst_cases(metrics, worst_per_stage)}
    flag_selection_bias(tables, list(selection_biased))
    out_dir = Path(out_dir)
    for name, table in tables.items():
        table["convention"] = conventions.describe()
        write_table(table, out_dir / f"{name}.tsv")
    plot_metrics(metrics, ["dice", "hd95_mm", nsd_column(conventions.nsd_tolerances_mm[0]), "lesion_f1"],
                 out_dir / "metrics.png")
    return tables


def evaluate_stage_entry(argv=None) -> None:
    from workflow_scripts import cli
    from workflow_scripts.settings import stage_classes

    p = cli.parser("evaluate-stage", "Metrics per case and class of one stage's segmentations.")
    p.add_argument("--split", required=True)
    p.add_argument("--stage", required=True)
    p.add_argument("--predictions", nargs="+", required=True,
                   help="the stage's <case>.nii.gz, in --references' order")
    p.add_argument("--references", nargs="+", required=True, help="the reference labels, <case>.nii.gz")
    cli.add_settings(p, "evaluate-stage")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    reference_dir, cases = cli.case_folder(args.references, "--references")
    prediction_dir, predicted = cli.case_folder(args.predictions, "--predictions")
    if predicted != cases:
        raise SystemExit("error: --predictions name other cases than --references")
    conventions = Conventions.from_settings(args.settings["evaluation"])
    print(f"conventions: {conventions.describe()}")
    classes = stage_classes(args.settings, args.stage)
    table = evaluate_stage(args.split, args.stage, cases, prediction_dir, reference_dir, classes, conventions)
    write_table(table, Path(args.out))


def summarize_metrics_entry(argv=None) -> None:
    from workflow_scripts import cli
    from workflow_scripts.settings import selection_biased_stages

    p = cli.parser("summarize-metrics", "Aggregates, stage comparisons, PINKCC scores, worst cases and figures.")
    cli.add_settings(p, "summarize-metrics")
    p.add_argument("--summary", required=True, help="summary.tsv; the other tables and the figure go beside it")
    p.add_argument("tables", nargs="+")
    args = p.parse_args(argv)
    evaluation = args.settings["evaluation"]
    tables = write_summary([Path(t) for t in args.tables], Path(args.summary).parent,
                           Conventions.from_settings(evaluation), evaluation["worst_cases"],
                           selection_biased_stages(args.settings))
    with pd.option_context("display.width", 200, "display.max_columns", 12):
        print(tables["pinkcc"].drop(columns="convention").to_string(index=False))
        summary = tables["summary"]
        print(summary[summary["metric"].isin(["dice", "hd95_mm"])].drop(columns="convention").to_string(index=False))
