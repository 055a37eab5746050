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
