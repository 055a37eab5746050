"""``snakemake <args> -n --until <rule>`` for each of several rules, through Snakemake's own command line entry point,
in one Python process: a user's dry run of each rule, without starting Python and importing Snakemake again for
each (about half of a dry run's 3 s on the toy study).

    python dry_runs.py OUT.json RULE [RULE ...] -- SNAKEMAKE_ARGS ...

OUT.json: {rule: {"returncode": ..., "output": stdout and stderr}}."""
import contextlib
import io
import json
import sys


def dry_run_each(rules: list[str], args: list[str]) -> dict:
    from snakemake.cli import main

    results = {}
    for rule in rules:
        output = io.StringIO()
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            try:
                main([*args, "-n", "--until", rule])
                returncode = 0
            except SystemExit as exit:  # how Snakemake's command line ends, success included
                returncode = exit.code
        results[rule] = {"returncode": returncode, "output": output.getvalue()}
    return results


if __name__ == "__main__":
    out, *rest = sys.argv[1:]
    split = rest.index("--")
    with open(out, "w") as f:
        json.dump(dry_run_each(rest[:split], rest[split + 1:]), f)
