import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED_EXAMPLE = REPO.parent / "shared" / "data" / "totalseg_example"


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory):
    from workflow_scripts.toy_data import generate_toy_dataset

    out = tmp_path_factory.mktemp("toy")
    generate_toy_dataset(out, n_train=6, n_test=2, seed=0)
    return out


@pytest.fixture(scope="session")
def totalseg_example():
    if not (SHARED_EXAMPLE / "example_ct_sm.nii.gz").exists():
        pytest.fail(f"the shared real CT example is missing: {SHARED_EXAMPLE} (see DEVELOPERS.md)")
    return SHARED_EXAMPLE


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
