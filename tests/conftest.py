import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# Commands the tests run in other folders import this checkout's package, as the workflow's jobs do.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
TOTALSEG_EXAMPLE = REPO / "tests" / "data" / "totalseg_example"  # Apache-2.0, see its README


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory):
    from workflow_scripts.toy_data import generate_toy_dataset

    out = tmp_path_factory.mktemp("toy")
    generate_toy_dataset(out, n_train=6, n_test=2, seed=0)
    return out


@pytest.fixture(scope="session")
def totalseg_example():
    """TotalSegmentator's small example CT and its label map, kept in the repository."""
    return TOTALSEG_EXAMPLE


@pytest.fixture
def toy_config(toy_dir):
    """The toy config with its data paths pointing at the session's toy dataset."""
    import yaml

    config = yaml.safe_load((REPO / "config" / "toy.yaml").read_text())
    for key, sub in (("images_tr", "imagesTr"), ("labels_tr", "labelsTr"), ("images_ts", "imagesTs"),
                     ("labels_ts", "labelsTs")):
        config["data"][key] = str(toy_dir / sub)
    config["anatomy"]["precomputed_dir"] = str(toy_dir / "anatomy")
    return config


def copy_case(src_dir: Path, case: str, dst_dir: Path, new_case: str) -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / f"{new_case}.nii.gz"
    shutil.copyfile(src_dir / f"{case}.nii.gz", dst)
    return dst


TIERS = ("unit", "dag", "smoke", "slurm", "browser")


def pytest_collection_modifyitems(config, items):
    """Each test gets one tier (see docs/testing.md): an explicit tier marker wins; otherwise a test of the SLURM
    study is `slurm`, one that needs a trained toy study is `smoke`, the rest of test_workflow.py (lint, dry runs,
    config errors, QC and planning without training) is `dag`, and everything else is `unit`."""
    for item in items:
        if any(item.get_closest_marker(tier) for tier in TIERS):
            continue
        fixtures = set(getattr(item, "fixturenames", ()))
        if "slurm_run" in fixtures:
            tier = "slurm"
        elif "smoke_run" in fixtures:
            tier = "smoke"
        elif item.path.name == "test_workflow.py":
            tier = "dag"
        else:
            tier = "unit"
        item.add_marker(getattr(pytest.mark, tier))
