import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from bundle_fixture import trained_configuration
from chaos import chaos_study, start_resumed_fold_twin
from workflow_helpers import PROFILES, TOY_CONFIG, run, snakemake
from workflow_scripts.config import validate_config

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# Commands the tests run in other folders import this checkout's package, as the workflow's jobs do.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
CHAOS_SEED = 0
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


# Tiers, in the order they run (docs/testing.md): each is a folder of tests/, and each test file says its tier.
TIERS = ("unit", "dag", "smoke", "slurm", "browser")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's, which names each test by the group marked here
def pytest_collection_modifyitems(config, items):
    """A test's tier is its folder (tests/<tier>/); its file marks it so (``pytestmark``), and the two must agree.
    The tiers run in TIERS' order, so that the SLURM study compares itself with a finished smoke run."""
    wrong = []
    for item in items:
        folder = item.path.parent.name
        marked = [tier for tier in TIERS if item.get_closest_marker(tier)]
        if folder not in TIERS or marked != [folder]:
            wrong.append(f"{item.nodeid}: in tests/{folder}/, marked {marked or 'with no tier'}")
    if wrong:
        raise pytest.UsageError("each test lives in its tier's folder and is marked with that tier only:\n  "
                                + "\n  ".join(wrong))
    items.sort(key=lambda item: TIERS.index(item.path.parent.name))
    config.stash[SLURM_SELECTED] = any(item.get_closest_marker("slurm") for item in items)
    # `make test` runs two pytest-xdist workers (--dist loadgroup): the tests that read the toy study or the SLURM
    # study form one group, so that one worker runs both studies once, in the order above, while the other takes
    # every other test.
    for item in items:
        if STUDIES & set(item.fixturenames) or item.path.parent.name in ("slurm", "browser"):
            item.add_marker(pytest.mark.xdist_group(STUDY_GROUP))


SLURM_SELECTED = pytest.StashKey[bool]()
STUDIES = {"smoke_run", "slurm_study"}
STUDY_GROUP = "toy_study"


@pytest.fixture(scope="session")
def slurm_study(tmp_path_factory):
    """The toy study through a single-node SLURM cluster, running in the background once started."""
    from slurm_study import SlurmStudy

    study = SlurmStudy(tmp_path_factory.mktemp("slurm_workdir"))
    yield study
    study.stop()


@pytest.fixture(scope="module")
def toy_workdir(tmp_path_factory):
    """A fresh working directory holding only the toy data, as after the README's first step."""
    workdir = tmp_path_factory.mktemp("workdir")
    run([sys.executable, "-m", "workflow_scripts", "make-toy-data", "--out", "resources/toy"], cwd=workdir)
    return workdir


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, request):
    """The toy study run once with the local profile, then its report: every stage of the real workflow on the
    toy data. The smoke, SLURM and browser tiers read it. On its way it is killed at seeded moments and recovered
    each time (tests/chaos.py): what the tiers check is also what a killed study ends with.

    With SLURM tests selected, the SLURM study starts first, in the background: its jobs wait on the queue and on
    Snakemake's start in each job while the local study trains."""
    if request.config.stash.get(SLURM_SELECTED, False):
        request.getfixturevalue("slurm_study").start()
    workdir = tmp_path_factory.mktemp("smoke_workdir")
    run([sys.executable, "-m", "workflow_scripts", "make-toy-data", "--out", "resources/toy"], cwd=workdir)
    chaos_study(workdir, ["--profile", PROFILES["local"], "--configfile", TOY_CONFIG, "--cores", "2"],
                seed=CHAOS_SEED, timeout_s=3000)
    # The resumed fold's uninterrupted twin trains in the background while the tests read the study: they mostly
    # leave the second core idle.
    request.config.stash[RESUMED_FOLD_TWIN] = start_resumed_fold_twin(workdir, tmp_path_factory.mktemp("twin"))
    snakemake(workdir, "--configfile", TOY_CONFIG, "--report", "report.html", timeout=600)
    return workdir


RESUMED_FOLD_TWIN = pytest.StashKey[object]()


@pytest.fixture(scope="session")
def resumed_fold_twin(smoke_run, request):
    """The chaos study's first resumed fold trained again without a stop (tests/chaos.py), started by smoke_run;
    None when no kill caught a fold between checkpoints."""
    twin = request.config.stash[RESUMED_FOLD_TWIN]
    yield twin
    if twin is not None and twin.process.poll() is None:
        twin.process.kill()


@pytest.fixture
def study(tmp_path, toy_config):
    summaries = {name: trained_configuration(tmp_path, name) for name in ("a", "b", "c")}
    selection = tmp_path / "selected.json"
    selection.write_text(json.dumps({"members": {"a": 1.0}, "fusions": [{"configuration": "c", "into": 2,
                                                                          "strategy": "mean"}]}))
    refinement = tmp_path / "selected_rules.json"
    refinement.write_text(json.dumps({"rules": []}))
    return {"summaries": summaries, "selection": selection, "refinement": refinement,
            "config": validate_config(toy_config), "channel_labels": {"a": [0, 1, 2], "b": [0, 1, 2], "c": [0, 2]}}
