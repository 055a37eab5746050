"""Refinement rules applied only when they improve the out-of-fold score, on cases built so the answer is known."""
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from workflow_scripts.io import read_json
from workflow_scripts.anatomy import anatomy_class_ids
from workflow_scripts.refinement import refine
from workflow_scripts.metrics import Conventions
from workflow_scripts.refinement_selection import choose_rules, rule_subsets, score_subsets, select_refinement

pytestmark = pytest.mark.unit

CLASSES = {"primary": 1, "metastasis": 2}
RULES = [
    {"name": "drop_in_bone", "kind": "drop_inside", "structures": ["vertebrae_*"], "min_fraction": 0.5},
    {"name": "drop_tiny", "kind": "drop_smaller_than", "min_volume_mm3": 10},
    {"name": "drop_outside_body", "kind": "drop_outside_body", "body_hu": -500, "min_fraction": 0.5},
]


def write(array, path, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def make_cases(root, n_cases=4):
    """Per case: a true primary, a true metastasis of 8 voxels (8 mm3, "tiny"), and a false metastasis inside a
    vertebra. drop_in_bone removes only the false one (helps); drop_tiny removes the true small metastasis (hurts);
    drop_outside_body removes nothing (everything is inside the body): only drop_in_bone is worth applying."""
    for sub in ("seg", "anatomy", "images", "labels"):
        (root / sub).mkdir(parents=True)
    vertebra = anatomy_class_ids("total")["vertebrae_L3"]
    for k in range(n_cases):
        shape = (20, 24, 24)
        image = np.full(shape, -1000, np.int16)
        image[2:18, 2:22, 2:22] = 40
        anatomy = np.zeros(shape, np.uint8)
        anatomy[10:16, 14:20, 14:20] = vertebra
        reference = np.zeros(shape, np.uint8)
        reference[4:8, 4:8 + k % 2, 4:8] = 1
        reference[4:6, 14:16, 4:6] = 2
        segmentation = reference.copy()
        segmentation[11:14, 15:18, 15:18] = 2
        case = f"case_{k}"
        for sub, array in (("seg", segmentation), ("anatomy", anatomy), ("images", image), ("labels", reference)):
            write(array, root / sub / f"{case}.nii.gz")
    return [f"case_{k}" for k in range(n_cases)]


def settings(apply):
    return {"rules": RULES, "apply": apply, "metric": "pinkcc", "task": "total", "classes": CLASSES,
            "conventions": {"both_empty": "one"}}


def subset_rows(tmp_path, cases):
    return score_subsets(cases, tmp_path / "seg", {c: tmp_path / "anatomy" / f"{c}.nii.gz" for c in cases},
                         tmp_path / "images", tmp_path / "labels", RULES, "total", CLASSES,
                         Conventions.from_settings({"both_empty": "one"}))


def run(tmp_path, cases, apply):
    return select_refinement(settings(apply), subset_rows(tmp_path, cases), tmp_path / f"{apply}.tsv",
                             tmp_path / f"{apply}.json")


def test_only_the_rule_that_helps_is_applied(tmp_path):
    cases = make_cases(tmp_path)
    selection = run(tmp_path, cases, "if_improves")
    assert [r["name"] for r in selection["rules"]] == ["drop_in_bone"]
    assert selection["left_out"] == ["drop_tiny", "drop_outside_body"]
    assert selection["score_with"] == pytest.approx(1.0) and selection["score_without"] < 1.0
    assert read_json(tmp_path / "if_improves.json") == selection
    table = pd.read_csv(tmp_path / "if_improves.tsv", sep="\t").set_index("rules")
    assert len(table) == 8 and table["chosen"].sum() == 1 and table.loc["drop_in_bone", "chosen"]
    assert table.loc["drop_in_bone,drop_tiny", "dice_metastasis"] < table.loc["drop_in_bone", "dice_metastasis"]
    assert table.loc["drop_outside_body", "score"] == table.loc["none", "score"]


def test_always_applies_every_rule(tmp_path):
    cases = make_cases(tmp_path, n_cases=2)
    selection = run(tmp_path, cases, "always")
    assert [r["name"] for r in selection["rules"]] == [r["name"] for r in RULES] and selection["left_out"] == []


def test_subset_scores_equal_refining_with_those_rules(tmp_path):
    """Removals are combined per component: the same as running the rules together on the case."""
    cases = make_cases(tmp_path, n_cases=1)
    segmentation = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg" / "case_0.nii.gz")))
    anatomy = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "anatomy" / "case_0.nii.gz")))
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "images" / "case_0.nii.gz")))
    run(tmp_path, cases, "always")
    table = pd.read_csv(tmp_path / "always.tsv", sep="\t").set_index("rules")
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels" / "case_0.nii.gz")))
    refined, removed = refine(segmentation, anatomy, image, (1.0, 1.0, 1.0), RULES[:2], anatomy_class_ids("total"))
    assert sorted(removed["rule"]) == ["drop_in_bone", "drop_tiny"]
    meta = 2.0 * np.sum((refined == 2) & (reference == 2)) / (np.sum(refined == 2) + np.sum(reference == 2))
    assert table.loc["drop_in_bone,drop_tiny", "dice_metastasis"] == pytest.approx(meta)


def test_rule_subsets_and_unknown_mode():
    assert rule_subsets(2) == [(), (0,), (1,), (0, 1)]
    with pytest.raises(ValueError, match="refinement.apply"):
        choose_rules(RULES, pd.DataFrame(columns=["rules"]), "pinkcc", "sometimes")
