"""The real totalsegmentator() call, offline, with a tiny nnU-Net model built by the fixtures."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from totalseg_fixture import build_tiny_totalseg_home
from workflow_scripts.anatomy import check_weights, prepare_totalseg_home, required_weights
from workflow_scripts.anatomy import anatomy_class_ids

REPO = Path(__file__).resolve().parent.parent
# Any download or usage report would go through this dead proxy and fail.
OFFLINE = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}


@pytest.fixture(scope="module")
def totalseg_home(tmp_path_factory):
    return build_tiny_totalseg_home(tmp_path_factory.mktemp("totalseg_home"), predicted_class="liver")


def segment(image, out, home, **settings):
    """The verb with a partial anatomy section, as a user would call it: the schema fills task and the rest."""
    env = {**os.environ, **OFFLINE}
    env.pop("TOTALSEG_HOME_DIR", None)
    section = json.dumps({"anatomy": {"source": "totalsegmentator", "totalseg_home": str(home), **settings}})
    return subprocess.run([sys.executable, "-m", "workflow_scripts", "segment-anatomy", "--image", str(image),
                           "--out", str(out), "--settings", section, "--device", "cpu", "--threads", "1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.smoke  # runs a TotalSegmentator model
@pytest.mark.parametrize("options", [{"fast": True}, {"fast": True, "roi_subset": ["liver"]}],
                         ids=["fast", "fast-roi-subset"])
def test_real_totalsegmentator_runs_offline_on_the_image_grid(totalseg_home, totalseg_example, tmp_path, options):
    """With a roi_subset TotalSegmentator first crops with its 6 mm model (also built by the fixture)."""
    image = totalseg_example / "example_ct_sm.nii.gz"
    out = tmp_path / "anatomy.nii.gz"
    result = segment(image, out, totalseg_home, **options)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ct, anatomy = sitk.ReadImage(str(image)), sitk.ReadImage(str(out))
    assert anatomy.GetSize() == ct.GetSize()
    assert np.allclose(anatomy.GetSpacing(), ct.GetSpacing()) and np.allclose(anatomy.GetOrigin(), ct.GetOrigin())
    assert np.allclose(anatomy.GetDirection(), ct.GetDirection())
    # The fixture model says "liver" everywhere: the map is that model's output, named by TotalSegmentator.
    values = np.unique(sitk.GetArrayFromImage(anatomy))
    assert values.tolist() == [anatomy_class_ids("total")["liver"]]
    assert json.loads((totalseg_home / "config.json").read_text())["send_usage_stats"] is False
    assert not list(tmp_path.glob("*.tmp*")), "no temporary file left behind"


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
