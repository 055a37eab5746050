import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from workflow_scripts.evaluation import (aggregate, compare_stages, evaluate_stage, holm, paired_comparison,
                                         wilcoxon_signed_rank_p, write_summary)
from workflow_scripts.metrics import Conventions
from workflow_scripts.runtime import read_benchmarks, write_runtime

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.unit


def write(array, path, spacing=(0.8, 0.8, 2.5)):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def test_evaluate_stage_per_case_and_class_in_physical_units(tmp_path):
    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    ref = np.zeros((4, 4, 4), np.uint8)
    ref[:2] = 1
    pred = ref.copy()
    pred[0] = 0
    pred[3, 3, 3] = 2
    write(ref, tmp_path / "ref/c1.nii.gz")
    write(pred, tmp_path / "pred/c1.nii.gz")
    table = evaluate_stage("oof", "ensemble", ["c1"], tmp_path / "pred", tmp_path / "ref",
                           {"primary": 1, "metastasis": 2}, Conventions.from_settings())
    assert list(table["dice"]) == pytest.approx([2 * 16 / 48, 0.0])
    assert list(table["reference_voxels"]) == [32, 0] and list(table["predicted_voxels"]) == [16, 1]
    voxel_ml = 0.8 * 0.8 * 2.5 / 1000
    assert table["reference_ml"].iloc[0] == pytest.approx(32 * voxel_ml)
    # Slice 0 removed: the far border is one slice (2.5 mm along z, the array's first axis) away.
    assert table["hd95_mm"].iloc[0] == pytest.approx(2.5)
    assert math.isnan(table["hd95_mm"].iloc[1])  # reference empty, prediction not: NaN by default
    assert table["lesions_false"].iloc[1] == 1
    assert table["convention"].iloc[0].startswith("both empty: scores 1")


def test_evaluate_stage_rejects_a_prediction_on_another_grid(tmp_path):
    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    write(np.zeros((4, 4, 4)), tmp_path / "ref/c1.nii.gz")
    write(np.zeros((4, 4, 4)), tmp_path / "pred/c1.nii.gz", spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="ensemble/c1: prediction grid .* differs from the reference grid"):
        evaluate_stage("oof", "ensemble", ["c1"], tmp_path / "pred", tmp_path / "ref", {"primary": 1}, Conventions.from_settings())


def test_holm_correction_by_hand():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.2, math.nan, 0.01])
    assert adjusted[0] == pytest.approx(0.2) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)


def test_paired_comparison_effect_sizes_and_tests():
    a = np.array([0.50, 0.60, 0.55, 0.70, 0.65, 0.40, 0.58, 0.62])
    b = a + np.array([0.10, 0.12, 0.08, 0.11, 0.09, 0.10, 0.13, 0.07])
    row = paired_comparison(a, b)
    assert row["rank_biserial"] == 1.0  # every difference positive
    assert row["wilcoxon_p"] == pytest.approx(2 / 2 ** 8)  # exact two-sided: the most extreme of 2^8 sign patterns
    diff = b - a
    assert row["cohens_dz"] == pytest.approx(diff.mean() / diff.std(ddof=1))
    assert row["differences_normal"] and row["t_test_p"] < 1e-5
    same = paired_comparison(a, a)
    assert same["wilcoxon_p"] == 1.0 and math.isnan(same["cohens_dz"])


def test_compare_stages_tests_the_cases_holding_the_class_and_counts_lesion_free_ones_apart():
    """Paired on the cases whose reference holds the class (the figures' cases) and both stages scored; a
    lesion-free case scores 1 when kept empty and 0 with any false positive, whatever the lesions, so it is not
    among the pairs but counted apart with how many each stage kept empty."""
    from scipy import stats

    def row(stage, case, dice, reference_voxels=10, predicted_voxels=10):
        return {"split": "oof", "stage": stage, "case": case, "class": "primary", "dice": dice,
                "reference_voxels": reference_voxels, "predicted_voxels": predicted_voxels}

    pairs = [(0.5, 0.6), (0.4, 0.7), (0.3, 0.35), (0.8, 0.9)]
    rows = [row(stage, f"c{k}", value) for k, pair in enumerate(pairs) for stage, value in zip(("model", "ensemble"), pair)]
    rows.append(row("model", "c9", 0.0))  # scored by one stage only: not a pair
    rows += [row("model", "f1", 1.0, 0, 0), row("ensemble", "f1", 0.0, 0, 5),  # the ensemble adds a false lesion
             row("model", "f2", 1.0, 0, 0), row("ensemble", "f2", 1.0, 0, 0)]
    table = compare_stages(pd.DataFrame(rows), ["dice"])
    assert len(table) == 1
    result = table.iloc[0].to_dict()
    differences = np.array([b - a for a, b in pairs])
    assert result["n_pairs"] == 4 and result["better"] == "ensemble"
    assert result["mean_difference"] == pytest.approx(differences.mean(), abs=1e-15)
    assert result["shapiro_p"] == pytest.approx(stats.shapiro(differences).pvalue, abs=1e-15)
    assert result["differences_normal"] == (result["shapiro_p"] > 0.05)
    assert (result["lesion_free_cases"], result["lesion_free_kept_empty_a"], result["lesion_free_kept_empty_b"]) == (2, 2, 1)
    assert (result["holm_family"], result["holm_pairs"]) == ("dice, oof, primary", 1)
    assert result["wilcoxon_p_holm"] == result["wilcoxon_p"] == pytest.approx(2 / 2 ** 4)  # all 4 positive, exact


def test_holm_runs_over_the_stage_pairs_of_one_metric_split_and_class():
    rng = np.random.default_rng(0)
    rows = []
    for split in ("oof", "test"):
        for k in range(8):
            base = rng.uniform(0.3, 0.7)
            for stage, shift in (("a", 0.0), ("b", 0.05), ("c", 0.1)):
                rows.append({"split": split, "stage": stage, "case": f"c{k}", "class": "primary", "reference_voxels": 9,
                             "predicted_voxels": 9, "dice": base + shift + rng.normal(0, 0.02), "hd95_mm": rng.uniform(1, 9)})
    table = compare_stages(pd.DataFrame(rows), ["dice", "hd95_mm"])
    assert len(table) == 2 * 2 * 3  # metrics x splits x stage pairs
    for family, group in table.groupby("holm_family", sort=False):
        assert len(group) == 3 and (group["holm_pairs"] == 3).all(), family
        assert list(group["wilcoxon_p_holm"]) == pytest.approx(holm(list(group["wilcoxon_p"])), abs=1e-15)
    assert set(table["holm_family"]) == {f"{m}, {s}, primary" for m in ("dice", "hd95_mm") for s in ("oof", "test")}


def test_summary_tables_and_figure(tmp_path):
    rows = [{"split": "oof", "stage": s, "case": c, "class": "primary", "label": 1, "dice": d, "hd95_mm": h,
             "reference_voxels": 10, "predicted_voxels": 8, "dice_dilated": d, "tp_voxels": 5, "fp_voxels": 1, "fn_voxels": 1,
             "lesions_missed": 0, "lesions_false": 0, "lesion_f1": 1.0, "nsd_1mm": d}
            for s, values in (("a", [(0.2, 5.0), (0.4, 3.0)]), ("b", [(0.6, 1.0), (math.nan, math.nan)]))
            for c, (d, h) in zip(["x", "y"], values)]
    table = pd.DataFrame(rows)
    summary = aggregate(table, ["dice"])
    assert list(summary["mean"]) == pytest.approx([0.3, 0.6])
    assert list(summary["n"]) == [2, 1]
    assert summary["iqr"].iloc[0] == pytest.approx(0.1)
    table.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    tables = write_summary([tmp_path / "t.tsv"], tmp_path / "out", Conventions.from_settings({"nsd_tolerances_mm": [1.0]}), 1)
    assert (tmp_path / "out/metrics.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("summary", "comparisons", "pinkcc", "worst_cases"):
        assert (tmp_path / f"out/{name}.tsv").exists()
    worst = tables["worst_cases"]
    assert list(worst["case"]) == ["x", "x"] and worst["prediction"].iloc[0] == "results/predictions/oof/a/x.nii.gz"
    assert set(tables["pinkcc"]["stage"]) == {"a", "b"}


def test_runtime_table_from_benchmark_files(tmp_path):
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    paths = []
    for job, seconds, rss in (("train_fold/resenc/fold_0", 80.0, 2000.0), ("train_fold/resenc/fold_1", 100.0, 2500.0),
                              ("qc_case/c1", 1.5, 120.0), ("select_ensemble", 7.0, 300.0)):
        path = tmp_path / "benchmarks" / f"{job}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + f"{seconds}\t0:01:20\t{rss}\t0\t0\t0\t0\t0\t50\t{seconds / 2}\n")
        paths.append(path)
    jobs = read_benchmarks(paths)
    assert list(jobs["rule"]) == ["train_fold", "train_fold", "qc_case", "select_ensemble"]
    assert list(jobs["job"]) == ["resenc/fold_0", "resenc/fold_1", "c1", "select_ensemble"]
    summary = write_runtime(paths, tmp_path / "jobs.tsv", tmp_path / "runtime.tsv", tmp_path / "runtime.png")
    train = summary[summary["rule"] == "train_fold"].iloc[0]
    assert train["jobs"] == 2 and train["total_seconds"] == 180.0 and train["max_rss_mb"] == 2500.0
    assert (tmp_path / "runtime.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("seed", range(16))
def test_exact_wilcoxon_equals_scipys_exact_test_with_ties_and_zeros(seed):
    """scipy enumerates every sign pattern for small samples (up to 13 non-zero differences); ours counts them."""
    from scipy import stats

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 14))
    diff = np.round(rng.normal(0.1, 0.3, size=n), int(rng.integers(0, 3)))  # rounding makes ties and zeros
    if not diff[diff != 0].size:
        assert math.isnan(wilcoxon_signed_rank_p(diff))
        return
    expected = stats.wilcoxon(diff, zero_method="wilcox").pvalue
    assert wilcoxon_signed_rank_p(diff) == pytest.approx(expected, rel=1e-9, abs=1e-12), diff


def test_metric_figures_show_the_cases_holding_the_class_and_count_the_lesion_free_apart(tmp_path):
    """A lesion-free case scores Dice 1 by convention whatever the stage does: it is left out of the plotted
    distribution (n counts the cases with the class) and counted apart, with how many stages kept it empty."""
    from workflow_scripts.evaluation import metric_panels, plot_metrics

    rows = []
    for stage, found in (("resenc", 0.8), ("ensemble", 0.9)):
        rows += [{"split": "oof", "stage": stage, "case": "a", "class": "metastasis", "dice": found,
                  "reference_voxels": 50, "predicted_voxels": 40},
                 {"split": "oof", "stage": stage, "case": "b", "class": "metastasis", "dice": found - 0.1,
                  "reference_voxels": 30, "predicted_voxels": 20},
                 {"split": "oof", "stage": stage, "case": "free", "class": "metastasis",
                  "dice": 1.0 if stage == "ensemble" else 0.0, "reference_voxels": 0,
                  "predicted_voxels": 0 if stage == "ensemble" else 12}]
    metrics = pd.DataFrame(rows)
    (panel,) = metric_panels(metrics, "dice")
    assert panel["stages"] == ["resenc", "ensemble"] and panel["cases"] == 2 and panel["lesion_free"] == 1
    assert [v.tolist() for v in panel["values"]] == [pytest.approx([0.8, 0.7]), pytest.approx([0.9, 0.8])]
    assert panel["kept_empty"] == [0, 1]
    plot_metrics(metrics, ["dice"], tmp_path / "metrics.png")
    assert (tmp_path / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_texts_name_every_metric_compared_and_the_columns_of_the_comparisons():
    """The report's workflow text and the comparisons' caption name the metrics the stages are compared on, the
    Holm family, the pre-test and the lesion-free columns as compare_stages writes them."""
    from workflow_scripts.evaluation import COMPARED

    report = REPO / "rules" / "report"
    names = {"dice": "Dice", "hd95_mm": "HD95", "lesion_f1": "lesion F1"}
    assert list(names) == COMPARED
    for text in ((report / "workflow.rst").read_text(), (report / "metrics_comparisons.rst").read_text()):
        assert all(name in text for name in names.values()), text
    caption = (report / "metrics_comparisons.rst").read_text()
    rows = [{"split": "oof", "stage": s, "case": c, "class": "primary", "dice": d, "reference_voxels": r,
             "predicted_voxels": 1} for s in ("a", "b") for c, d, r in (("x", 0.5, 1), ("y", 0.6, 1), ("z", 0.0, 0))]
    columns = set(compare_stages(pd.DataFrame(rows), ["dice"]).columns)
    for column in ("holm_family", "holm_pairs", "shapiro_p", "differences_normal", "lesion_free_cases",
                   "lesion_free_kept_empty_a", "selection_biased"):
        assert f"``{column}" in caption, column
        assert column in columns | {"selection_biased"}, column  # selection_biased: added by write_summary
