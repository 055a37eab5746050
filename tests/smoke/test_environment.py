"""The pinned environment resolves on its own, and jobs import this checkout."""
import os
import subprocess
import sys

import pytest
import yaml

from workflow_helpers import REPO, requirement_pins

pytestmark = pytest.mark.smoke  # resolves about 190 packages against the registry: about a minute


def test_conda_pins_resolve_in_a_fresh_venv_and_jobs_import_the_checkout(tmp_path):
    """The environment's pip section resolves on its own (pip's dry run in an empty venv), and a job's command,
    run elsewhere with the PYTHONPATH rules/common.smk sets, imports this checkout's package."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    pins = tmp_path / "pins.txt"
    pins.write_text("\n".join(requirement_pins()) + "\n")
    resolved = subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "--dry-run", "--quiet",
                               "--report", tmp_path / "report.json", "-r", pins], capture_output=True, text=True)
    assert resolved.returncode == 0, resolved.stderr[-2000:]
    report = yaml.safe_load((tmp_path / "report.json").read_text())
    names = {item["metadata"]["name"].lower() for item in report["install"]}
    assert {"nnunetv2", "torch", "snakemake", "totalsegmentator"} <= names
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    job = subprocess.run([venv / "bin" / "python", "-m", "workflow_scripts", "--help"], cwd=tmp_path,
                         env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert job.returncode == 0 and "qc-case" in job.stdout, job.stderr
    alone = subprocess.run([venv / "bin" / "python", "-m", "workflow_scripts", "--help"], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    assert alone.returncode != 0  # nothing installed: the checkout is the only way in
