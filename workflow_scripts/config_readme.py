"""config/README.md's tables, generated from the schema's descriptions and defaults."""
from __future__ import annotations

import re

import yaml

from workflow_scripts.config import SCHEMA, _schema

README = SCHEMA.parent.parent / "README.md"
GENERATED = re.compile(r"(<!-- schema table: (?P<section>[\w.<>]+) -->\n)(.*?)(<!-- end of schema table -->)", re.S)


def _flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()


def _rows(schema: dict, prefix: str = "") -> list[str]:
    rows, required = [], schema.get("required", [])
    for name, sub in schema.get("properties", {}).items():
        key = f"{prefix}{name}"
        if "description" in sub or "properties" not in sub:
            default = "required" if name in required else f"`{_flow(sub['default'])}`" if "default" in sub else "-"
            rows.append(f"| `{key}` | {default} | {sub.get('description', '')} |")
        if "properties" in sub:
            rows += _rows(sub, key + ".")
    return rows


def _kind_rows(rule: dict) -> list[str]:
    kinds = {kind: ([], []) for kind in rule["properties"]["kind"]["enum"]}
    for case in rule["allOf"]:
        condition = case["if"]["properties"]["kind"]
        for kind in condition.get("enum", [condition.get("const")]):
            kinds[kind][0].extend(case["then"].get("required", []))
            kinds[kind][1].extend(f"`{k}: {_flow(v['default'])}`" for k, v in case["then"].get("properties", {}).items())
    return [f"| `{kind}` | {', '.join(f'`{k}`' for k in needs) or '-'} | {', '.join(defaults) or '-'} |"
            for kind, (needs, defaults) in kinds.items()]


def schema_table(section: str) -> str:
    """config/README.md's table of one section, from the schema's descriptions and defaults. ``section``: a
    top-level key, ``configurations.<name>``, ``refinement.rules`` or ``refinement.rules.kind``."""
    schema = _schema()["properties"]
    if section == "configurations.<name>":
        node, prefix = schema["configurations"]["additionalProperties"], ""
    elif section.startswith("refinement.rules"):
        node, prefix = schema["refinement"]["properties"]["rules"]["items"], ""
        if section.endswith(".kind"):
            return "\n".join(["| kind | needs | defaults |", "| --- | --- | --- |", *_kind_rows(node)]) + "\n"
    else:
        node, prefix = schema[section], ""
    return "\n".join(["| key | default | meaning |", "| --- | --- | --- |", *_rows(node, prefix)]) + "\n"


def config_readme(text: str) -> str:
    """``text`` with every generated table replaced by the schema's."""
    return GENERATED.sub(lambda m: m.group(1) + schema_table(m.group("section")) + m.group(4), text)


def config_readme_entry(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m workflow_scripts config-readme",
                                description="Regenerate config/README.md's tables from the schema's descriptions.")
    p.add_argument("--check", action="store_true", help="only report whether the file is in sync")
    args = p.parse_args(argv)
    text = README.read_text()
    generated = config_readme(text)
    if args.check:
        raise SystemExit(0 if generated == text else f"{README} is out of sync with the schema; run "
                         "python -m workflow_scripts config-readme")
    README.write_text(generated)
    print(f"wrote {README}")
