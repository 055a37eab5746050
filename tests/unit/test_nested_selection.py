"""Nested selection on out-of-fold predictions built so that choosing on all cases overfits their noise."""
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from workflow_scripts.ensemble_selection import select_ensemble
from workflow_scripts.io import image_array, read_image, write_probabilities
from workflow_scripts.nested_selection import nested_selection

pytestmark = pytest.mark.unit

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
                write_probabilities(root / "oof" / name / f"{case}.npz", probabilities, [0, 1], "float16")


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


def test_per_case_jobs_give_the_selections_of_one_process(tmp_path):
    """The workflow runs the selections as jobs: per case score-ensembles, ensemble-case, score-refinements and
    nested-case; select-ensemble, nested-ensembles, select-refinement and nested-selection rank their tables.
    Their choices, tables and segmentations equal those of one process, to the last digit."""
    import json

    from partial_config import selection_config, settings_arg

    from workflow_scripts.__main__ import main
    from workflow_scripts.config import section_settings
    from workflow_scripts.io import read_json
    from workflow_scripts.metrics import Conventions
    from workflow_scripts.refinement_selection import score_subsets, select_refinement
    from workflow_scripts.settings import ensemble_selection, read_settings

    make_study(tmp_path)
    cases = [case for fold in FOLDS for case in fold]
    (tmp_path / "anatomy").mkdir()
    for case in cases:
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros(SHAPE, np.uint8)), str(tmp_path / "anatomy" / f"{case}.nii.gz"))
    anatomy = {case: tmp_path / "anatomy" / f"{case}.nii.gz" for case in cases}
    rules = RULES + [{"name": "drop_outside_body", "kind": "drop_outside_body", "body_hu": -500, "min_fraction": 0.5}]
    refinement = {**refinement_settings(), "rules": rules}
    one = nested_selection(ensemble_settings(), refinement, FOLDS, tmp_path / "oof", tmp_path / "labels", anatomy,
                           tmp_path / "images", tmp_path / "one", tmp_path / "one.tsv")

    def path(folder, case, ext="nii.gz"):
        return str(tmp_path / folder / f"{case}.{ext}")

    def probabilities(case):
        return [path(f"oof/{name}", case, "npz") for name in RIGHT]

    config = selection_config(ensemble_settings(), refinement)
    es, rs = (settings_arg(config, verb) for verb in ("select-ensemble", "select-refinement"))
    nested = settings_arg(config, "nested-case")
    assert ensemble_selection(read_settings("nested-case", json.loads(nested))) == {
        **ensemble_settings(), "conventions": section_settings("evaluation", {"both_empty": "one"})}
    (tmp_path / "splits.json").write_text(json.dumps([{"train": [], "val": fold} for fold in FOLDS]))
    ensemble_scores = [path("ensemble_scores", case, "tsv") for case in cases]
    refinement_scores = [path("refinement_scores", case, "tsv") for case in cases]
    for case in cases:
        main(["score-ensembles", "--settings", es, "--reference", path("labels", case), "--probabilities",
              *probabilities(case), "--out", path("ensemble_scores", case, "tsv")])
    main(["select-ensemble", "--settings", es, "--case-scores", *ensemble_scores, "--out-table",
          str(tmp_path / "candidates.tsv"), "--out-selection", str(tmp_path / "selected.json")])
    main(["nested-ensembles", "--settings", es, "--splits", str(tmp_path / "splits.json"), "--case-scores",
          *ensemble_scores, "--out", str(tmp_path / "ensembles.tsv")])
    for case in cases:
        main(["ensemble-case", "--case", case, "--selection", str(tmp_path / "selected.json"), "--probabilities",
              *probabilities(case), "--image", path("labels", case), "--out", path("ensemble", case)])
        main(["score-refinements", "--settings", nested, "--segmentation",
              path("ensemble", case), "--selection", str(tmp_path / "selected.json"), "--nested-ensembles",
              str(tmp_path / "ensembles.tsv"), "--probabilities", *probabilities(case), "--anatomy",
              path("anatomy", case), "--image", path("images", case), "--reference", path("labels", case),
              "--out", path("refinement_scores", case, "tsv")])
    main(["select-refinement", "--settings", rs, "--case-scores", *refinement_scores, "--out-table",
          str(tmp_path / "rule_subsets.tsv"), "--out-selection", str(tmp_path / "selected_rules.json")])
    main(["nested-selection", "--settings", rs, "--nested-ensembles", str(tmp_path / "ensembles.tsv"),
          "--case-scores", *refinement_scores, "--out-table", str(tmp_path / "folds.tsv")])
    for case in cases:
        main(["nested-case", "--settings", nested, "--folds",
              str(tmp_path / "folds.tsv"), "--probabilities", *probabilities(case), "--reference",
              path("labels", case), "--anatomy", path("anatomy", case), "--image", path("images", case),
              "--out", path("nested", case)])

    assert (tmp_path / "folds.tsv").read_text() == (tmp_path / "one.tsv").read_text()
    assert list(one["ensemble"]) == ["b", "b", "a", "a", "a"]
    for case in cases:
        assert np.array_equal(image_array(read_image(tmp_path / "nested" / f"{case}.nii.gz")),
                              image_array(read_image(tmp_path / "one" / f"{case}.nii.gz"))), case
    # The study's rules: as if scored in one process on the ensemble-case segmentations.
    rows = score_subsets(cases, tmp_path / "ensemble", anatomy, tmp_path / "images", tmp_path / "labels", rules,
                         "total", CLASSES, Conventions.from_settings({"both_empty": "one"}))
    expected = select_refinement(refinement, rows, tmp_path / "one_rules.tsv", tmp_path / "one_rules.json")
    assert read_json(tmp_path / "selected_rules.json") == expected
    assert (tmp_path / "rule_subsets.tsv").read_text() == (tmp_path / "one_rules.tsv").read_text()
    # Each case of fold 0 is scored on "a" (the study's ensemble, once: the same label map) and on "b" (fold 1's).
    table = pd.read_csv(tmp_path / "refinement_scores" / "case_0.tsv", sep="\t")
    assert sorted(set(zip(table["candidate"], table["source"]))) == [("a", "ensemble"), ("a", "probabilities"),
                                                                      ("b", "probabilities")]

    with pytest.raises(SystemExit, match="other refinement settings"):  # tables written with other rules
        main(["select-refinement", "--settings", settings_arg(selection_config(refinement=refinement_settings()),
                                                              "select-refinement"), "--case-scores",
              *refinement_scores, "--out-table", str(tmp_path / "x.tsv"), "--out-selection", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="no rule-subset scores of b"):  # a case's table missing
        main(["nested-selection", "--settings", rs, "--nested-ensembles", str(tmp_path / "ensembles.tsv"),
              "--case-scores", *refinement_scores[:-1], "--out-table", str(tmp_path / "x.tsv")])
    with pytest.raises(SystemExit, match="case_99 is held out by 0 folds"):
        main(["nested-case", "--settings", nested, "--folds",
              str(tmp_path / "folds.tsv"), "--probabilities", *[p.replace("case_0", "case_99") for p in
                                                                probabilities("case_0")],
              "--reference", path("labels", "case_99"), "--anatomy", path("anatomy", "case_0"), "--image",
              path("images", "case_99"), "--out", path("nested", "case_99")])
    with pytest.raises(SystemExit, match="name different cases"):  # the rule passed another case's image
        main(["nested-case", "--settings", nested, "--folds",
              str(tmp_path / "folds.tsv"), "--probabilities", *probabilities("case_0"), "--reference",
              path("labels", "case_0"), "--anatomy", path("anatomy", "case_0"), "--image", path("images", "case_1"),
              "--out", path("nested", "case_0")])


# A rule that helps only the cases of fold 0 and hurts every other case a little. Fold 0's maps hold the lesion
# plus 72 isolated one-voxel false positives (drop_tiny removes them); every other case's reference holds a
# one-voxel lesion beside the 27-voxel one, found by the model (drop_tiny removes it too).
LEAK_FOLD = 0
TINY_RULE = [{"name": "drop_tiny", "kind": "drop_smaller_than", "min_volume_mm3": 2}]
SPECKS = [(z, y, x) for z in (6, 8) for y in range(0, 12, 2) for x in range(0, 12, 2)]
LONE_TRUE_VOXEL = (8, 11, 11)


def make_leaky_rule_study(root):
    for sub in ("labels", "images", "ensemble", "oof/a"):
        (root / sub).mkdir(parents=True)
    for k, fold in enumerate(FOLDS):
        for case in fold:
            reference = np.zeros(SHAPE, np.uint8)
            reference[2:5, 2:5, 2:5] = 1
            prediction = reference.copy()
            if k == LEAK_FOLD:
                prediction[tuple(np.array(SPECKS).T)] = 1
            else:
                reference[LONE_TRUE_VOXEL] = prediction[LONE_TRUE_VOXEL] = 1
            sitk.WriteImage(sitk.GetImageFromArray(reference), str(root / "labels" / f"{case}.nii.gz"))
            sitk.WriteImage(sitk.GetImageFromArray(prediction), str(root / "ensemble" / f"{case}.nii.gz"))
            sitk.WriteImage(sitk.GetImageFromArray(np.full(SHAPE, 40, np.int16)), str(root / "images" / f"{case}.nii.gz"))
            probabilities = np.stack([np.where(prediction, 0.1, 0.9), np.where(prediction, 0.9, 0.1)])
            write_probabilities(root / "oof" / "a" / f"{case}.npz", probabilities.astype(np.float32), [0, 1], "float16")


def test_a_rule_that_helps_only_the_held_out_fold_is_not_chosen_for_it(tmp_path):
    """Leakage check: fold 0's rules are chosen on folds 1-4 only, where drop_tiny hurts, so fold 0 goes without
    it; chosen on every case (fold 0's large gain included) it is kept, and that estimate is above the nested one.
    A selection that let fold 0's own cases vote would keep the rule for fold 0 and fail here."""
    from workflow_scripts.metrics import Conventions
    from workflow_scripts.refinement_selection import score_subsets, select_refinement

    make_leaky_rule_study(tmp_path)
    cases = [case for fold in FOLDS for case in fold]
    ensemble = {**ensemble_settings(), "members": {"a": 1.0}, "select": False, "metric": "dice"}
    refinement = {**refinement_settings(), "rules": TINY_RULE, "metric": "dice"}
    table = nested_selection(ensemble, refinement, FOLDS, tmp_path / "oof", tmp_path / "labels", {},
                             tmp_path / "images", tmp_path / "nested", tmp_path / "folds.tsv")
    assert list(table["rules"]) == ["none", "drop_tiny", "drop_tiny", "drop_tiny", "drop_tiny"]

    # Dice by construction: fold 0 with its specks 54 / (27 + 27 + 72), without them 1; elsewhere 1 with the lone
    # voxel, 54 / (27 + 28) without it.
    specked, clean, lone_dropped = 54 / 126, 1.0, 54 / 55
    nested = [dice(tmp_path, "nested", case) for case in cases]
    assert nested == pytest.approx([specked] * 2 + [lone_dropped] * 8, abs=1e-12)
    rows = score_subsets(cases, tmp_path / "ensemble", {}, tmp_path / "images", tmp_path / "labels", TINY_RULE,
                         "total", CLASSES, Conventions.from_settings({"both_empty": "one"}))
    everything = select_refinement(refinement, rows, tmp_path / "subsets.tsv", tmp_path / "selected.json")
    assert [rule["name"] for rule in everything["rules"]] == ["drop_tiny"]
    optimistic = (2 * clean + 8 * lone_dropped) / 10
    assert everything["score_with"] == pytest.approx(optimistic, abs=1e-12)
    assert everything["score_without"] == pytest.approx((2 * specked + 8 * clean) / 10, abs=1e-12)
    assert np.mean(nested) == pytest.approx((2 * specked + 8 * lone_dropped) / 10, abs=1e-12)
    assert optimistic - np.mean(nested) == pytest.approx(2 * (clean - specked) / 10, abs=1e-12)  # 0.114
