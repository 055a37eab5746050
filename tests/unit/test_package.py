"""The package's shape: nnU-Net's internals behind one seam, no import cycles, verbs owned by their stage
modules, files declared by the rules, and one way to import the package."""
import ast
import json
import re
from pathlib import Path

import pytest
import yaml
from workflow_helpers import requirement_pins

from workflow_scripts.__main__ import VERBS, entry_point

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
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


def unquoted_placeholders(command: str) -> list[str]:
    """Placeholders of a shell command that Snakemake would paste in unquoted (every one but ``{threads}`` takes
    ``:q``), and command substitutions outside double quotes, whose output the shell would split."""
    placeholders = re.findall(r"(?<!\{)\{([^{}]+)\}(?!\})", command)
    unquoted = [p for p in placeholders if p != "threads" and not p.endswith(":q")]
    bare_substitutions = re.findall(r'(?<!")\$\(', command)
    return unquoted + [f"$( outside double quotes in {command.strip()[:60]}"] * len(bare_substitutions)


def test_every_placeholder_of_every_shell_command_is_quoted():
    """Any folder a user has works (a space, a quote, brackets, '$', accents): each path reaches the command as one
    argument. Flags built in params are lists (``flag_args``), so that ``:q`` quotes each item."""
    rules = sorted((REPO / "rules").glob("*.smk"))
    commands = [c for path in rules for c in shell_commands(path.read_text())]
    assert len(commands) >= 20
    assert not [p for c in commands for p in unquoted_placeholders(c)]
    # the check itself finds what it is for
    assert unquoted_placeholders('"ln -sfn $(realpath {input:q}) {output} --n {threads}"') == [
        "output", "$( outside double quotes in \"ln -sfn $(realpath {input:q}) {output} --n {threads}\""]
    assert unquoted_placeholders('"ln -sfn \\"$(realpath {input:q})\\" {output:q} {params.x:q}"') == []


def rules_without_resources(snakefile: str, rule_texts: list[str]) -> list[str]:
    """Rules that run as cluster jobs (not localrules) but take no memory or runtime from compute.resources: on
    SLURM such a job gets the cluster's defaults, and no time limit where the partition has none."""
    local = set(re.findall(r"^    (\w+),$", snakefile.split("localrules:", 1)[1].split("\n\n", 1)[0], re.M))
    missing = []
    for text in rule_texts:
        for name, body in re.findall(r"^(?:rule|checkpoint) (\w+):\n((?:(?:    .*)?\n)+)", text, re.M):
            if name not in local and f'resources_of("{name}")' not in body:
                missing.append(name)
    return missing


def test_every_cluster_job_takes_its_resources_from_the_config():
    rules = [path.read_text() for path in sorted((REPO / "rules").glob("*.smk"))]
    snakefile = (REPO / "Snakefile").read_text()
    assert len(re.findall(r"^(?:rule|checkpoint) ", "".join(rules), re.M)) >= 30  # the parser sees the rules
    assert rules_without_resources(snakefile, rules) == []
    # the check itself finds what it is for: a rule without resources, one with another rule's
    planted = ['rule a:\n    output:\n        "x"\n    resources:\n        **resources_of("b"),\n\n\n'
               'rule c:\n    output:\n        "y"\n']
    assert rules_without_resources("localrules:\n    all,\n    d,\n\n", planted) == ["a", "c"]


def schema_defaults() -> dict[str, list[str]]:
    """{default as JSON: [config keys with that default]} of every key of the schema, rule kinds' included."""
    found = {}

    def walk(node, key):
        if isinstance(node, dict):
            if "default" in node and key:
                found.setdefault(json.dumps(node["default"], sort_keys=True), []).append(key)
            for name, sub in node.items():
                walk(sub, name if key is not None and name not in ("properties", "then", "else", "items") and
                     isinstance(sub, dict) and ("default" in sub or "type" in sub) else key)
        elif isinstance(node, list):
            for sub in node:
                walk(sub, key)

    walk(yaml.safe_load((REPO / "config" / "schema" / "config.schema.yaml").read_text()), "")
    return found


def repeated_defaults(source: str, defaults: dict[str, list[str]]) -> list[str]:
    """Keyword defaults (of functions and argparse arguments) that repeat a schema default: any string the schema
    has as a default, or another value where the parameter is named like the key it repeats."""
    trivial = {json.dumps(v) for v in (None, True, False, "", 0, 1, [], {})}
    found = []
    for node in ast.walk(ast.parse(source)):
        pairs = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            positional = node.args.posonlyargs + node.args.args
            pairs += zip(positional[len(positional) - len(node.args.defaults):], node.args.defaults)
            pairs += [(a, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None]
            pairs = [(a.arg, d) for a, d in pairs]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            name = next((a.value for a in node.args if isinstance(a, ast.Constant)), "")
            pairs += [(str(name).lstrip("-").replace("-", "_"), k.value) for k in node.keywords if k.arg == "default"]
        for name, default in pairs:
            try:
                value = json.dumps(ast.literal_eval(default), sort_keys=True)
            except ValueError:
                continue
            keys = defaults.get(value, [])
            if value not in trivial and keys and (value.startswith('"') or any(name in k or k in name for k in keys)):
                found.append(f"line {node.lineno}: {name}={value} repeats the schema's {keys[0]}")
    return found


def test_no_python_default_repeats_a_schema_default():
    """The schema is the only place for defaults: a verb's settings come filled from it (cli.add_settings), so a
    function or flag that defaults to the same value again is a second source that can drift."""
    defaults = schema_defaults()
    assert json.dumps("float16") in defaults and json.dumps("total") in defaults  # the walk finds leaves
    found = {path.name: repeated_defaults(path.read_text(), defaults) for path in PACKAGE.glob("*.py")}
    assert not {name: rows for name, rows in found.items() if rows}
    # the check itself finds what it is for
    planted = 'def f(x, encoding: str = "float16", gap_factor=1.5, per_case=1.5):\n    p.add_argument("--task", default="total")\n'
    assert repeated_defaults(planted, defaults) == [
        "line 1: encoding=\"float16\" repeats the schema's probability_encoding",
        "line 1: gap_factor=1.5 repeats the schema's missing_gap_factor",
        "line 2: task=\"total\" repeats the schema's task"]


def test_conda_environment_lists_the_requirements_pins():
    """Snakemake copies envs/workflow.yaml into .snakemake/conda/ before creating it (a ``-r`` path or the
    package's path would not resolve there), so the pins are written out, the same as requirements.txt."""
    env = yaml.safe_load((REPO / "envs" / "workflow.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == requirement_pins()


