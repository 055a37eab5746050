"""The package's shape: nnU-Net's internals behind one seam, no import cycles, verbs owned by their stage
modules, files declared by the rules, and one way to import the package."""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_scripts.__main__ import VERBS, entry_point

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "workflow_scripts"


def test_private_nnunet_names_are_used_in_the_seam_only():
    """The names of nnU-Net's internals this workflow touches appear in nnunet_seam.py and nowhere else."""
    private = re.compile(r"_internal_\w+|my_fantastic_logging|\.fget\.cache_clear|_set_batch_size_and_oversample|"
                         r"save_checkpoint|recursive_find_\w+|\.multiprocessing\b|nnUNetTrainer as base")
    users = {path.name for path in PACKAGE.glob("*.py") if private.search(path.read_text())}
    assert users == {"nnunet_seam.py"}


def imports_of(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("workflow_scripts."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "workflow_scripts":  # from workflow_scripts import cli
            found.update(alias.name for alias in node.names)
    return found


def test_no_import_cycles_between_modules():
    graph = {path.stem: imports_of(path) for path in PACKAGE.glob("*.py")}
    assert graph["ensemble"] and graph["prediction"]  # the parser sees the package's own imports

    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, (*seen, n))) for n in graph.get(start, ()))

    cycles = sorted(module for module in graph if reaches(module, module))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_every_verb_is_owned_by_its_stage_module_and_shows_its_help(capsys):
    """__main__ is a table: each verb's parser and adapter live in its stage module as ``<verb>_entry``; every
    such function is reachable by a verb, and each parser builds (``--help``)."""
    entries = {(path.stem, name) for path in PACKAGE.glob("*.py")
               for name in re.findall(r"^def (\w+)_entry\(", path.read_text(), re.M)}
    assert entries == {(module, verb.replace("-", "_")) for verb, module in VERBS.items()}
    for verb in VERBS:
        with pytest.raises(SystemExit) as stop:
            entry_point(verb)(["--help"])
        assert stop.value.code == 0 and f"python -m workflow_scripts {verb}" in capsys.readouterr().out
    assert "build_parser" not in (PACKAGE / "__main__.py").read_text()


def shell_commands(text: str) -> list[str]:
    """The shell strings of a rules file (the lines after each ``shell:``, up to the next directive)."""
    return re.findall(r"^    shell:\n((?:        .*\n?)+)", text, re.M)


def test_rules_declare_the_files_they_pass():
    """Every path a job reads or writes is an input or output Snakemake sees: no folder derived from an input,
    no results/ path written into a shell command."""
    rules = sorted((REPO / "rules").glob("*.smk"))
    commands = [c for path in rules for c in shell_commands(path.read_text())]
    assert len(commands) >= 20  # the parser finds the rules' commands
    assert not [c for c in commands if "results/" in c]
    assert not [p.name for p in rules if "dirname(input" in p.read_text()]


def requirement_pins() -> list[str]:
    return [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def test_conda_environment_lists_the_requirements_pins():
    """Snakemake copies envs/workflow.yaml into .snakemake/conda/ before creating it (a ``-r`` path or the
    package's path would not resolve there), so the pins are written out, the same as requirements.txt."""
    env = yaml.safe_load((REPO / "envs" / "workflow.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == requirement_pins()


@pytest.mark.smoke  # resolves about 190 packages against the registry: about a minute
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
