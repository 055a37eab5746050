"""What the workflow-level tests share: Snakemake run on this checkout, the toy config and the profiles, and a
folder name as users have them."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


TOY_CONFIG = REPO / "config" / "toy.yaml"


PROFILES = {"local": REPO / "profiles" / "local", "slurm": REPO / "profiles" / "slurm"}


# A folder name as users have them: a space, a single quote, brackets, `$HOME` literally, non-ASCII letters.
ODD_NAME = "Patienten (2024) d'été $HOME [données]"


def tool_env():
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # rules call this env's python
    return env


def run(args, cwd, timeout=3000, check=True):
    result = subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return result


def snakemake(workdir, *args, check=True, timeout=3000):
    return run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
                *map(str, args)], cwd=workdir, check=check, timeout=timeout)


def dry_run_each(workdir, rules, *args, processes=2) -> dict:
    """``snakemake <args> -n --until <rule>`` in ``workdir`` for each rule (tests/dry_runs.py), the rules shared
    among ``processes`` Python processes (one per core): {rule: {"returncode", "output"}}."""
    common = ["-s", str(REPO / "Snakefile"), "--directory", str(workdir), *map(str, args)]
    shares = [share for share in (rules[i::processes] for i in range(processes)) if share]
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        outs = [Path(folder) / f"{i}.json" for i in range(len(shares))]
        started = [subprocess.Popen([sys.executable, str(Path(__file__).parent / "dry_runs.py"), str(out), *share,
                                     "--", *common], cwd=workdir, env=tool_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True) for out, share in zip(outs, shares)]
        for process, out in zip(started, outs):
            output, _ = process.communicate(timeout=1200)
            assert process.returncode == 0, output[-4000:]
            results.update(json.loads(out.read_text()))
    return results


def weights_digest(checkpoint: Path) -> str:
    """SHA-256 of an nnU-Net checkpoint's network weights (read in a process of its own: torch stays out of the
    test process)."""
    script = ("import hashlib, sys, torch; w = torch.load(sys.argv[1], weights_only=False)['network_weights']; "
              "print(hashlib.sha256(b''.join(w[k].numpy().tobytes() for k in sorted(w))).hexdigest())")
    return run([sys.executable, "-c", script, str(checkpoint)], cwd=Path(checkpoint).parent).stdout.strip()


def validation_probabilities(fold: Path) -> dict:
    """A trained fold's validation probabilities, {file name: array}."""
    import numpy as np

    return {p.name: np.load(p)["probabilities"] for p in (Path(fold) / "validation").glob("*.npz")}


def same_probabilities(a: dict, b: dict) -> bool:
    import numpy as np

    return bool(a) and a.keys() == b.keys() and all(np.array_equal(a[name], b[name]) for name in a)


def job_count(dry_run_output, rule):
    """The count of a rule's jobs in the 'Job stats' table of a dry run (0 when absent)."""
    match = re.search(rf"^{rule}\s+(\d+)\s*$", dry_run_output, re.MULTILINE)
    return int(match.group(1)) if match else 0


def list_rules(workdir):
    result = snakemake(workdir, "--list-rules", "--configfile", TOY_CONFIG)
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def odd_folder_study(toy_dir: Path, root: Path) -> Path:
    """The toy config in a study folder under ``root``, its data folders (DICOM series included) copied under
    ``root`` too; ``root`` is named as users name folders (ODD_NAME)."""
    data = root / "data"
    shutil.copytree(toy_dir, data, symlinks=True)
    config = yaml.safe_load(TOY_CONFIG.read_text())
    for key, folder in (("images_tr", "imagesTr"), ("labels_tr", "labelsTr"), ("images_ts", "imagesTs"),
                        ("labels_ts", "labelsTs")):
        config["data"][key] = str(data / folder)
    config["anatomy"]["precomputed_dir"] = str(data / "anatomy")
    study = root / "study"
    study.mkdir()
    # sort_keys=False: the labels' order is meaningful
    (study / "study.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
    return study



def requirement_pins() -> list[str]:
    return [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
