"""Selection of the ensemble on out-of-fold predictions built so that the right answer is known."""
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from workflow_scripts.ensemble_selection import enumerate_candidates, rank_candidates, select_ensemble
from workflow_scripts.io import read_json, write_probabilities

pytestmark = pytest.mark.unit

CLASSES = {"primary": 1, "metastasis": 2}
SHAPE = (12, 16, 16)


def make_oof(root, n_cases=5):
    """Reference: a primary block and a metastasis block per case. Out-of-fold probabilities of
    - ``good``: primary right; at the metastasis only 0.3 (background 0.7), elsewhere metastasis 0.3 too;
    - ``noisy``: like ``good`` plus a false primary block;
    - ``twin``: exactly ``good`` (ties must go to fewer configurations);
    - ``meta_only`` (labels 0 and 2): metastasis 0.45 at the metastasis, 0.05 elsewhere.
    Fusing ``meta_only`` by probability union lifts the metastasis to 0.3 + 0.45 - 0.135 = 0.615 and nowhere
    else above background (0.335); mean (0.375) and max (0.45) leave it below background. So the one right
    answer is ``good`` fused with ``meta_only`` by union."""
    references = root / "labels"
    references.mkdir(parents=True)
    for k in range(n_cases):
        case = f"case_{k}"
        ref = np.zeros(SHAPE, np.uint8)
        ref[2:6, 2:8, 2 + k:8 + k] = 1
        ref[8:10, 10:13, 10:13] = 2
        sitk.WriteImage(sitk.GetImageFromArray(ref), str(references / f"{case}.nii.gz"))
        good = np.zeros((3, *SHAPE), np.float32)
        good[0], good[2] = 0.7, 0.3
        good[:, ref == 1] = np.array([0.1, 0.8, 0.1])[:, None]
        noisy = good.copy()
        noisy[:, 9:12, 0:4, 0:4] = np.array([0.1, 0.8, 0.1])[:, None, None, None]
        meta = np.zeros((2, *SHAPE), np.float32)
        meta[1] = np.where(ref == 2, 0.45, 0.05)
        meta[0] = 1 - meta[1]
        for name, array, labels in (("good", good, [0, 1, 2]), ("noisy", noisy, [0, 1, 2]),
                                    ("twin", good, [0, 1, 2]), ("meta_only", meta, [0, 2])):
            (root / "oof" / name).mkdir(parents=True, exist_ok=True)
            write_probabilities(root / "oof" / name / f"{case}.npz", array, labels, "float16")
    return [f"case_{k}" for k in range(n_cases)]


def settings(select=True, metric="pinkcc", members=None):
    return {"members": members or {"good": 1.0, "noisy": 1.0, "twin": 1.0},
            "fusions": [{"configuration": "meta_only", "into": 2, "strategy": "mean"}],
            "select": select, "strategies": ["mean", "max", "union"], "metric": metric, "classes": CLASSES,
            "conventions": {"both_empty": "one"}}


@pytest.mark.parametrize("metric", ["pinkcc", "dice"])
def test_the_known_best_ensemble_is_selected(tmp_path, metric):
    cases = make_oof(tmp_path)
    selection = select_ensemble(settings(metric=metric), cases, tmp_path / "oof", tmp_path / "labels",
                                tmp_path / "candidates.tsv", tmp_path / "selected.json")
    assert selection["members"] == {"good": 1.0}
    assert selection["fusions"] == [{"configuration": "meta_only", "into": 2, "strategy": "union"}]
    assert selection["selected_among"] == 7 * 4 and read_json(tmp_path / "selected.json") == selection
    table = pd.read_csv(tmp_path / "candidates.tsv", sep="\t")
    assert len(table) == 28 and table["selected"].sum() == 1 and table.loc[0, "candidate"] == selection["candidate"]
    best = table.loc[0]
    assert best["dice_primary"] == pytest.approx(1.0) and best["dice_metastasis"] == pytest.approx(1.0)
    # Without the union fusion the metastasis is lost; "twin" adds nothing, so good+twin ranks below good.
    by_name = table.set_index("candidate")
    assert by_name.loc["good | meta_only mean into 2", "dice_metastasis"] == 0.0
    assert by_name.loc["good", "dice_metastasis"] == 0.0
    assert by_name.loc["good+twin | meta_only union into 2", "score"] == pytest.approx(best["score"])
    assert by_name.loc["good+twin | meta_only union into 2", "rank"] > best["rank"]
    assert by_name.loc["noisy | meta_only union into 2", "dice_primary"] < 0.9


def test_without_selection_the_configured_ensemble_is_used(tmp_path):
    cases = make_oof(tmp_path, n_cases=2)
    selection = select_ensemble(settings(select=False, members={"good": 2.0, "noisy": 1.0}), cases,
                                tmp_path / "oof", tmp_path / "labels", tmp_path / "t.tsv", tmp_path / "s.json")
    assert selection["selected_among"] == 1 and selection["members"] == {"good": 2.0, "noisy": 1.0}
    assert selection["fusions"][0]["strategy"] == "mean"


def test_candidates_cover_every_subset_and_strategy():
    candidates = enumerate_candidates({"a": 1.0, "b": 1.0, "c": 1.0},
                                      [{"configuration": "m", "into": 2, "strategy": "mean"}], ["max"], True)
    assert len(candidates) == 7 * 2 and len({c.name for c in candidates}) == 14
    assert all(len(c.fusions) <= 1 and all(s == "max" for _, _, s in c.fusions) for c in candidates)


def test_unknown_metric_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown selection metric"):
        rank_candidates([], pd.DataFrame(columns=["candidate"]), "hd95")


def test_per_case_score_jobs_give_the_selection_of_one_process(tmp_path):
    """score_ensembles writes one table per case (parallel jobs); select_ensemble ranks their rows: the table and
    the choice equal those of scoring every case in one process, to the last digit."""
    from partial_config import selection_config, settings_arg

    from workflow_scripts.__main__ import main

    cases = make_oof(tmp_path)
    one = select_ensemble(settings(), cases, tmp_path / "oof", tmp_path / "labels", tmp_path / "one.tsv",
                          tmp_path / "one.json")
    arguments = ["--settings", settings_arg(selection_config(settings()), "select-ensemble")]
    for case in cases:
        main(["score-ensembles", *arguments, "--reference", str(tmp_path / "labels" / f"{case}.nii.gz"),
              "--probabilities", *[str(tmp_path / "oof" / n / f"{case}.npz") for n in ("good", "noisy", "twin",
                                                                                         "meta_only")],
              "--out", str(tmp_path / "cases" / f"{case}.tsv")])
    scores = [str(tmp_path / "cases" / f"{case}.tsv") for case in cases]
    main(["select-ensemble", *arguments, "--case-scores", *scores, "--out-table", str(tmp_path / "jobs.tsv"),
          "--out-selection", str(tmp_path / "jobs.json")])
    assert read_json(tmp_path / "jobs.json") == one
    assert (tmp_path / "jobs.tsv").read_text() == (tmp_path / "one.tsv").read_text()
    shutil.copy(tmp_path / "cases/case_3.tsv", tmp_path / "case_4.tsv")  # case_4's table holds case_3's rows
    with pytest.raises(SystemExit, match="missing .*case_4"):
        main(["select-ensemble", *arguments, "--case-scores", *scores[:-1], str(tmp_path / "case_4.tsv"),
              "--out-table", str(tmp_path / "x.tsv"), "--out-selection", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="more than once: .'case_3'"):
        main(["select-ensemble", *arguments, "--case-scores", *scores[:-1], scores[3],
              "--out-table", str(tmp_path / "x.tsv"), "--out-selection", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="other ensemble settings"):  # tables from other settings
        main(["select-ensemble", "--settings", settings_arg(selection_config(settings(select=False)), "select-ensemble"),
              "--case-scores", *scores,
              "--out-table", str(tmp_path / "x.tsv"), "--out-selection", str(tmp_path / "x.json")])
