"""Nested selection on out-of-fold predictions built so that choosing on all cases overfits their noise."""
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from workflow_scripts.ensemble_selection import select_ensemble
from workflow_scripts.io import image_array, read_image, write_probabilities
from workflow_scripts.nested_selection import nested_selection

CLASSES = {"primary": 1}
SHAPE = (10, 12, 12)
FOLDS = [[f"case_{2 * k}", f"case_{2 * k + 1}"] for k in range(5)]
# Configuration "a" finds the lesion in folds 0 and 1 only, "b" in folds 2 and 3 only, neither in fold 4: which
# is "better" is noise. On all cases they tie and "a" wins (configured order), right on 4 of 10 cases. Chosen
# without fold k, the winner is always the configuration that misses fold k: the nested estimate is 0.
RIGHT = {"a": {0, 1}, "b": {2, 3}}
RULES = [{"name": "drop_tiny", "kind": "drop_smaller_than", "min_volume_mm3": 10}]  # lesions are 27 mm3: no effect


def make_study(root):
    for sub in ("labels", "images"):
        (root / sub).mkdir(parents=True)
    for k, fold in enumerate(FOLDS):
        for case in fold:
            reference = np.zeros(SHAPE, np.uint8)
            reference[2:5, 2:5, 2:5] = 1
            sitk.WriteImage(sitk.GetImageFromArray(reference), str(root / "labels" / f"{case}.nii.gz"))
            sitk.WriteImage(sitk.GetImageFromArray(np.full(SHAPE, 40, np.int16)), str(root / "images" / f"{case}.nii.gz"))
            for name, right in RIGHT.items():
                lesion = np.zeros(SHAPE, bool)
                if k in right:
                    lesion[2:5, 2:5, 2:5] = True
                else:
                    lesion[6:9, 7:10, 7:10] = True  # a confident lesion in the wrong place
                probabilities = np.stack([np.where(lesion, 0.1, 0.9), np.where(lesion, 0.9, 0.1)]).astype(np.float32)
                (root / "oof" / name).mkdir(parents=True, exist_ok=True)
                write_probabilities(root / "oof" / name / f"{case}.npz", probabilities, [0, 1])


def ensemble_settings():
    return {"members": {"a": 1.0, "b": 1.0}, "fusions": [], "select": True, "strategies": ["mean"],
            "metric": "pinkcc", "classes": CLASSES, "conventions": {"both_empty": "one"}}


def refinement_settings():
    return {"rules": RULES, "apply": "if_improves", "metric": "pinkcc", "task": "total", "classes": CLASSES,
            "conventions": {"both_empty": "one"}}


def dice(root, folder, case):
    prediction = image_array(read_image(root / folder / f"{case}.nii.gz")) == 1
    reference = image_array(read_image(root / "labels" / f"{case}.nii.gz")) == 1
    return 2 * (prediction & reference).sum() / (prediction.sum() + reference.sum())


def test_nested_estimate_is_below_the_optimistic_one_when_the_choice_fits_noise(tmp_path):
    make_study(tmp_path)
    cases = [case for fold in FOLDS for case in fold]
    optimistic = select_ensemble(ensemble_settings(), cases, tmp_path / "oof", tmp_path / "labels",
                                 tmp_path / "candidates.tsv", tmp_path / "selected.json")
    assert optimistic["members"] == {"a": 1.0}  # the tie goes to the first configured
    table = nested_selection(ensemble_settings(), refinement_settings(), FOLDS, tmp_path / "oof", tmp_path / "labels",
                             {}, tmp_path / "images", tmp_path / "nested", tmp_path / "folds.tsv")
    assert list(table["ensemble"]) == ["b", "b", "a", "a", "a"]  # each fold's choice made without it
    assert list(table["rules"]) == ["none"] * 5  # drop_tiny removes nothing, so it is never kept
    assert pd.read_csv(tmp_path / "folds.tsv", sep="\t")["held_out"].tolist() == [",".join(f) for f in FOLDS]
    # The chosen ensemble scored on the cases it was chosen on: right on folds 0 and 1 (4 of 10 cases).
    chosen_dice = [1.0 if k in RIGHT["a"] else 0.0 for k, fold in enumerate(FOLDS) for _ in fold]
    nested_dice = [dice(tmp_path, "nested", case) for case in cases]
    assert np.mean(chosen_dice) == pytest.approx(0.4) and optimistic["score"] > 0.3
    assert nested_dice == [0.0] * 10  # every fold segmented by the configuration that misses it
    # The workflow passes the cases' score tables (score_ensembles) instead of scoring again: the same folds.
    from workflow_scripts.ensemble_selection import read_case_scores, score_case, settings_candidates
    from workflow_scripts.io import write_table
    from workflow_scripts.metrics import Conventions

    candidates = settings_candidates(ensemble_settings())
    for case in cases:
        rows = score_case(candidates, case, tmp_path / "oof", tmp_path / "labels" / f"{case}.nii.gz",
                          ensemble_settings()["classes"], Conventions.from_settings(ensemble_settings()["conventions"]))
        write_table(pd.DataFrame(rows), tmp_path / "scores" / f"{case}.tsv", float_format="%.17g")
    rows = read_case_scores([tmp_path / "scores" / f"{case}.tsv" for case in cases], cases, candidates)
    from_tables = nested_selection(ensemble_settings(), refinement_settings(), FOLDS, tmp_path / "oof",
                                   tmp_path / "labels", {}, tmp_path / "images", tmp_path / "nested_tables",
                                   tmp_path / "folds_tables.tsv", rows)
    pd.testing.assert_frame_equal(from_tables, table)


def test_without_selection_nested_equals_the_configured_pipeline(tmp_path):
    make_study(tmp_path)
    settings = {**ensemble_settings(), "select": False, "members": {"b": 1.0}}
    table = nested_selection(settings, {**refinement_settings(), "apply": "always"}, FOLDS, tmp_path / "oof",
                             tmp_path / "labels", {}, tmp_path / "images", tmp_path / "nested", tmp_path / "folds.tsv")
    assert list(table["ensemble"]) == ["b"] * 5 and list(table["rules"]) == ["drop_tiny"] * 5
    assert [dice(tmp_path, "nested", case) for fold in FOLDS for case in fold] == \
        [1.0 if k in RIGHT["b"] else 0.0 for k, fold in enumerate(FOLDS) for _ in fold]
