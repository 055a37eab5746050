"""The real totalsegmentator() call, offline, with a tiny nnU-Net model built by the fixtures."""
import json
import os
from pathlib import Path

import pytest

from totalseg_fixture import segment
from workflow_scripts.anatomy import check_weights, prepare_totalseg_home, required_weights

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_missing_weights_fail_before_any_download(tmp_path, totalseg_example):
    out = tmp_path / "anatomy.nii.gz"
    result = segment(totalseg_example / "example_ct_sm.nii.gz", out, tmp_path / "empty_home", fast=False)
    assert result.returncode != 0 and not out.exists()
    assert "totalseg_download_weights -t total" in result.stderr
    assert "Dataset291_TotalSegmentator_part1_organs_1559subj" in result.stderr
    assert "Downloading" not in result.stdout + result.stderr


def test_required_weights_follow_totalsegmentator_task_table(tmp_path):
    fast = required_weights(tmp_path, "total", fast=True, roi_subset=None)
    assert [f.name for f in fast] == ["Dataset297_TotalSegmentator_total_3mm_1559subj"]
    full = required_weights(tmp_path, "total", fast=False, roi_subset=["liver"])
    assert len(full) == 6 and full[-1].name.startswith("Dataset298_")  # five parts + the cropping model
    with pytest.raises(FileNotFoundError, match="anatomy.totalseg_home"):
        check_weights(tmp_path, "total", True, None)


def test_usage_statistics_are_switched_off_and_other_settings_kept(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"totalseg_id": "abc", "send_usage_stats": True}))
    prepare_totalseg_home(tmp_path)
    settings = json.loads((tmp_path / "config.json").read_text())
    assert settings == {"totalseg_id": "abc", "send_usage_stats": False}
    assert os.environ["TOTALSEG_HOME_DIR"] == str(tmp_path.resolve())
