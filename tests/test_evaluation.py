import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from workflow_scripts.evaluation import dice, evaluate_stage, summarize, write_summary


def test_dice_known_values():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[:2] = True  # 32 voxels
    b[1:3] = True  # 32 voxels, 16 shared
    assert dice(a, b, 1.0) == pytest.approx(0.5)
    assert dice(a, a, 1.0) == 1.0
    assert dice(a, np.zeros_like(a), 1.0) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a), 1.0) == 1.0
    assert math.isnan(dice(np.zeros_like(a), np.zeros_like(a), float("nan")))


def write(array, path):
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(path))


def test_evaluate_stage_per_case_and_class(tmp_path):
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
                           {"primary": 1, "metastasis": 2}, 1.0)
    assert list(table["dice"]) == pytest.approx([2 * 16 / 48, 0.0])
    assert list(table["reference_voxels"]) == [32, 0] and list(table["predicted_voxels"]) == [16, 1]
    assert table["empty_convention"].iloc[0] == "both empty -> 1.0"


def test_summary_and_figure(tmp_path):
    rows = [{"split": "oof", "stage": s, "case": c, "class": "primary", "label": 1, "dice": d,
             "reference_voxels": 1, "predicted_voxels": 1, "empty_convention": "both empty -> 1.0"}
            for s, values in (("a", [0.2, 0.4]), ("b", [0.6, float("nan")])) for c, d in zip(["x", "y"], values)]
    table = pd.DataFrame(rows)
    summary = summarize([table])
    assert list(summary["mean"]) == pytest.approx([0.3, 0.6])
    assert list(summary["n"]) == [2, 1]
    table.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    write_summary([tmp_path / "t.tsv"], tmp_path / "s.tsv", tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
