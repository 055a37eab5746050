"""The smoke run's Snakemake report in headless Chromium."""
import os

import pandas as pd
import pytest


pytestmark = pytest.mark.browser


def test_report_pages_and_figures_load_in_headless_chromium(smoke_run):
    from report_browser import chromium_path, walk_report

    executable = chromium_path()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: .ci/run installs Debian's chromium package")
        pytest.skip("no Chromium here (apt-get install chromium); CI installs it")
    checked = walk_report(smoke_run / "report.html", executable)
    assert checked["errors"] == [], checked["errors"]
    results = checked["results"]
    for expected in ("results/qc/qc_table.tsv", "results/metrics/summary.tsv", "results/metrics/comparisons.tsv",
                     "results/metrics/pinkcc.tsv", "results/metrics/worst_cases.tsv", "results/metrics/metrics.png",
                     "results/runtime/runtime.png", "results/training/resenc_multiclass/fold_0_progress.png",
                     "results/metrics/test/refined.tsv", "results/ensemble/candidates.tsv",
                     "results/refinement/rule_subsets.tsv", "results/burden/test/burden.tsv",
                     "results/qc/dataset_summary.tsv", "results/qc/dataset.png"):
        assert expected in results, expected
    figures = [path for path, mime in results.items() if mime == "image/png"]
    assert sorted(checked["figures"]) == sorted(figures) and len(figures) >= 18  # 15 folds, QC, metrics, runtime
    assert {"Quality control / Other", "Metrics / Summary", "Runtime / Other", "Cases / New cases",
            "Cases / Worst out-of-fold cases"} <= set(checked["pages"])
    # One overlay per new case, the worst out-of-fold cases, every configuration's folds overlaid, the anatomy
    # QC figure: all opened in the browser (every PNG decoded).
    for case in ("toy_100", "toy_101", "toy_102"):
        assert f"results/overlays/test/{case}.png" in checked["figures"]
    worst = pd.read_csv(smoke_run / "results/metrics/worst_cases.tsv", sep="\t")
    worst = worst[(worst["split"] == "oof") & (worst["stage"] == "refined")]
    drawn = {p for p in checked["figures"] if p.startswith("results/overlays/oof_worst/")}
    assert drawn == {f"results/overlays/oof_worst/{r['case']}_{r['class']}.png" for _, r in worst.iterrows()}
    assert len(drawn) >= 2
    for name in ("resenc_multiclass", "isotropic_multiclass", "metastasis_only"):
        assert f"results/training/{name}/folds.png" in checked["figures"]
    assert "results/qc/flagged_labels.png" in checked["figures"]
