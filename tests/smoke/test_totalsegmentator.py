"""The real totalsegmentator() call, offline, with a tiny nnU-Net model the fixture builds."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from totalseg_fixture import build_tiny_totalseg_home, segment
from workflow_scripts.anatomy import anatomy_class_ids

pytestmark = pytest.mark.smoke  # runs a TotalSegmentator model


@pytest.fixture(scope="module")
def totalseg_home(tmp_path_factory):
    return build_tiny_totalseg_home(tmp_path_factory.mktemp("totalseg_home"), predicted_class="liver")


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
