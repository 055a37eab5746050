import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.io import (atomic_path, decode_probabilities, encode_probabilities, labels_from_probabilities,
                                 read_probabilities, write_probabilities, write_table)

pytestmark = pytest.mark.unit


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


# The largest rounding error of each encoding on [0, 1]: float16 values in [0.5, 1) lie 2^-11 apart, so half that;
# uint8 stores round(255 p), so half a step of 1/255.
@pytest.mark.parametrize("encoding, dtype, tolerance", [("float16", np.float16, 2.0 ** -12), ("uint8", np.uint8, 0.5 / 255)])
def test_probabilities_are_stored_in_either_encoding_and_read_back_within_its_rounding(tmp_path, encoding, dtype,
                                                                                        tolerance):
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet([0.3, 0.3, 0.3], size=(6, 7, 8)).transpose(3, 0, 1, 2).astype(np.float32)
    probabilities[:, 0, 0, :3] = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]  # the ends are kept exactly
    write_probabilities(tmp_path / "c.npz", probabilities, [0, 1, 2], encoding)
    with np.load(tmp_path / "c.npz") as data:
        assert data["probabilities"].dtype == dtype
    read, labels = read_probabilities(tmp_path / "c.npz")
    assert labels == [0, 1, 2] and read.dtype == np.float32
    error = np.abs(read - probabilities)
    float32 = np.finfo(np.float32).eps  # the read-back and the difference are float32
    assert error.max() <= tolerance + float32 and error.max() > tolerance / 2  # rounded, not copied
    assert np.array_equal(read[:, 0, 0, :3], probabilities[:, 0, 0, :3])
    # Where one class leads by more than the rounding, the label map read back is the same.
    top = np.sort(probabilities, axis=0)
    clear = top[-1] - top[-2] > 2 * tolerance
    assert clear.mean() > 0.9
    assert np.array_equal(labels_from_probabilities(read, labels)[clear],
                          labels_from_probabilities(probabilities, labels)[clear])


def test_uint8_encoding_clips_out_of_range_values_and_unknown_encodings_and_types_are_refused():
    encoded = encode_probabilities(np.array([[-0.1, 0.0, 0.5, 1.0, 1.2]], dtype=np.float32), "uint8")
    assert encoded.tolist() == [[0, 0, 128, 255, 255]]
    assert decode_probabilities(encoded)[0, 2] == np.float32(128 / 255)
    with pytest.raises(ValueError, match="'int8' is not one of"):
        encode_probabilities(np.zeros((1, 2)), "int8")
    with pytest.raises(ValueError, match="of type int16"):
        decode_probabilities(np.zeros((1, 2), dtype=np.int16))


def test_a_killed_writers_temporary_goes_when_its_file_is_written_again(tmp_path):
    """SIGKILL runs no cleanup: the temporary a killed writer left stays until its job reruns and writes the same
    file, which removes it; the temporaries of other files in the folder (even with a name that starts alike) stay."""
    import signal
    import subprocess
    import sys

    from workflow_scripts.io import stale_temporaries

    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from workflow_scripts.io import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half'); print(tmp, flush=True); time.sleep(60)"), str(tmp_path / "case_1.nii.gz")],
        stdout=subprocess.PIPE, text=True)
    orphan = Path(writer.stdout.readline().strip())
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert orphan.exists() and orphan.parent == tmp_path and stale_temporaries(tmp_path / "case_1.nii.gz") == [orphan]
    others = [tmp_path / ".case_10.abcd1234.tmp.nii.gz", tmp_path / ".case_1.x.abcd1234.tmp.nii.gz",
              tmp_path / ".case_1.abcd1234.tmp.json"]
    for other in others:
        other.write_bytes(b"another file's")
    with atomic_path(tmp_path / "case_1.nii.gz") as tmp:
        tmp.write_bytes(b"whole")
    assert (tmp_path / "case_1.nii.gz").read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["case_1.nii.gz"] + [p.name for p in others])
