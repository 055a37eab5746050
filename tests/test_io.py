import os

import pandas as pd
import pytest

from workflow_scripts.io import atomic_path, write_table


def test_atomic_outputs_get_the_mode_of_a_plain_open_and_failures_leave_nothing(tmp_path):
    previous = os.umask(0o022)
    try:
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "table.tsv")
        with open(tmp_path / "plain.tsv", "w") as fh:
            fh.write("a\n")
    finally:
        os.umask(previous)
    mode = (tmp_path / "table.tsv").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain.tsv").stat().st_mode & 0o777 == 0o644  # readable by the group, not 0600
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "half.nii.gz") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.tsv", "table.tsv"]


def test_image_grid_is_the_images_grid_from_its_header(tmp_path):
    import numpy as np
    import SimpleITK as sitk

    from workflow_scripts.io import array_like, image_grid

    image = sitk.GetImageFromArray(np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5))
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-10.0, 20.5, 3.0))
    image.SetDirection(sitk.VersorTransform((0.2, 0.3, 0.9), 0.4).GetMatrix())  # oblique
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    written = sitk.ReadImage(str(tmp_path / "ct.nii.gz"))
    grid = image_grid(tmp_path / "ct.nii.gz")
    assert grid.GetSize() == written.GetSize() == (5, 4, 3)
    assert grid.GetSpacing() == written.GetSpacing()
    assert grid.GetOrigin() == written.GetOrigin()
    assert grid.GetDirection() == written.GetDirection()
    labels = array_like(np.ones((3, 4, 5), dtype=np.uint8), grid)
    assert labels.GetDirection() == written.GetDirection()
