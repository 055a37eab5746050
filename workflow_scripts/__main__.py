"""Command line of the workflow: ``python -m workflow_scripts <verb> ...``, one verb per rule.

Each verb lives beside the function it runs, as ``<verb>_entry`` in its stage module (see workflow_scripts/cli.py
for the conventions); only that module is imported, so nnU-Net verbs configure nnU-Net before its first import.
"""
from __future__ import annotations

import importlib
import sys

# verb: the stage module that owns it
VERBS = {
    "make-toy-data": "toy_data",
    "convert-dicom": "dicom",
    "dicom-results": "dicom_results",
    "qc-case": "qc",
    "qc-aggregate": "qc",
    "qc-gate": "qc",
    "qc-anatomy": "qc_anatomy",
    "qc-anatomy-report": "qc_anatomy",
    "make-splits": "splits",
    "crop-case": "crop",
    "convert-dataset": "nnunet_dataset",
    "plan-and-preprocess": "planning",
    "preflight": "preflight",
    "preflight-gate": "preflight",
    "train-fold": "training",
    "plot-folds": "training",
    "gather-oof": "prediction",
    "predict": "prediction",
    "place-predictions": "prediction",
    "export-bundle": "bundle",
    "score-ensembles": "ensemble_selection",
    "select-ensemble": "ensemble_selection",
    "ensemble-case": "ensemble",
    "segment-anatomy": "anatomy",
    "score-refinements": "refinement_selection",
    "select-refinement": "refinement_selection",
    "refine-case": "refinement",
    "nested-ensembles": "nested_selection",
    "nested-selection": "nested_selection",
    "nested-case": "nested_selection",
    "tumour-burden": "burden",
    "evaluate-stage": "evaluation",
    "summarize-metrics": "evaluation",
    "summarize-runtime": "runtime",
    "overlay-case": "overlays",
    "export-meshes": "meshes",
    "overlay-worst": "overlays",
    "config-readme": "config_readme",
    "progress": "progress",
}


def entry_point(verb: str):
    module = importlib.import_module(f"workflow_scripts.{VERBS[verb]}")
    return getattr(module, verb.replace("-", "_") + "_entry")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in VERBS:
        print(f"usage: python -m workflow_scripts <verb> [--help]\n\n{__doc__}\nverbs: {', '.join(VERBS)}",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    entry_point(argv[0])(argv[1:])


if __name__ == "__main__":  # nnU-Net's spawn pools re-import the main module
    main()
