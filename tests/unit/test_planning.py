import numpy as np
import pytest

from workflow_scripts.planning import isotropic_spacing, shrink_plans

pytestmark = pytest.mark.unit


def resenc_plans():
    return {"configurations": {"3d_fullres": {
        "patch_size": [96, 160, 160], "batch_size": 2,
        "architecture": {"network_class_name": "ResidualEncoderUNet", "arch_kwargs": {
            "n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
            "kernel_sizes": [[1, 3, 3]] + [[3, 3, 3]] * 5,
            "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
            "n_blocks_per_stage": [1, 3, 4, 6, 6, 6], "n_conv_per_stage_decoder": [1] * 5}}}}}


def test_shrink_plans_cuts_every_per_stage_list_and_keeps_the_original():
    plans = resenc_plans()
    small = shrink_plans(plans, n_stages=3, max_features=16, max_blocks_per_stage=1, patch_size=[15, 47, 50],
                         batch_size=4)
    conf = small["configurations"]["3d_fullres"]
    arch = conf["architecture"]["arch_kwargs"]
    assert arch["n_stages"] == 3
    assert arch["features_per_stage"] == [16, 16, 16]
    assert arch["strides"] == [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    assert arch["n_blocks_per_stage"] == [1, 1, 1] and arch["n_conv_per_stage_decoder"] == [1, 1]
    assert len(arch["kernel_sizes"]) == 3
    # Patch rounded up to multiples of the total downsampling (2, 4, 4).
    assert conf["patch_size"] == [16, 48, 52] and conf["batch_size"] == 4
    assert plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["n_stages"] == 6


def test_no_overrides_changes_nothing():
    assert shrink_plans(resenc_plans()) == resenc_plans()


def test_isotropic_spacing_keeps_the_voxel_volume():
    spacing = isotropic_spacing([2.5, 0.8, 0.8])
    assert spacing[0] == spacing[1] == spacing[2]
    assert np.isclose(np.prod(spacing), 2.5 * 0.8 * 0.8, rtol=1e-3)
