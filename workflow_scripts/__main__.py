"""Command line of the workflow: ``python -m workflow_scripts <verb> ...``, one verb per rule.

Structured values (label mappings, settings, rules) are passed as JSON strings. nnU-Net verbs configure
nnU-Net's folders and pools for their own process before nnU-Net is imported.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _json(text: str):
    return json.loads(text)


def _nnunet(args, augmentation_workers: int | None = None) -> None:
    from workflow_scripts.nnunet_seam import configure_nnunet

    workers = args.augmentation_workers if augmentation_workers is None else augmentation_workers
    configure_nnunet(args.nnunet_root, args.threads, workers)


def cmd_make_toy_data(args):
    from workflow_scripts.toy_data import generate_toy_dataset

    cases = generate_toy_dataset(args.out, n_train=args.n_train, n_test=args.n_test, seed=args.seed,
                                 dicom_cases=tuple(args.dicom_cases))
    dicom = [c for c in args.dicom_cases if c in cases["train"] + cases["test"]]
    print(f"toy data: {len(cases['train'])} training and {len(cases['test'])} test cases in {args.out}"
          + (f" ({', '.join(dicom)} as DICOM series folders)" if dicom else ""))


def cmd_convert_dicom(args):
    from workflow_scripts.dicom import DicomError, convert_series_folder

    try:
        findings = convert_series_folder(args.case, Path(args.folder), Path(args.out), Path(args.findings),
                                         _json(args.settings) if args.settings else None)
    except DicomError as err:
        sys.exit(f"error: {err}")
    print(f"{args.case}: {findings['chosen']} (rule {findings['rule']}), {findings['missing_slices']} missing "
          f"slice(s), other series: {findings['other_series'] or 'none'}")


def cmd_qc_case(args):
    from workflow_scripts.qc import write_case_qc

    table = write_case_qc(args.case, Path(args.image), Path(args.label) if args.label else None, args.label_values,
                          Path(args.out), _json(args.settings) if args.settings else None,
                          Path(args.measurements) if args.measurements else None,
                          Path(args.dicom_findings) if args.dicom_findings else None)
    for row in table[table["severity"] != "info"].itertuples():
        print(f"{row.severity}: [{row.check}] {row.message}")


def cmd_qc_aggregate(args):
    from workflow_scripts.io import write_json, write_table
    from workflow_scripts.qc import QCError, aggregate_qc, dataset_summary, passing_cases, plot_dataset

    dataset_rows = []
    if args.measurements:
        labels = _json(args.labels)
        summary, dataset_rows = dataset_summary([Path(p) for p in args.measurements], _json(args.splits), labels)
        write_table(summary, Path(args.summary))
        plot_dataset(summary, labels, Path(args.figure))
    try:
        table = aggregate_qc([Path(p) for p in args.tables], Path(args.out), _json(args.exclude), _json(args.allow),
                             _json(args.orphan_labels), dataset_rows, args.on_error, _json(args.splits),
                             _json(args.misnamed), args.case_pattern)
    except QCError as err:
        sys.exit(str(err))
    if args.passing:
        passing = passing_cases(table, _json(args.splits))
        write_json(passing, Path(args.passing))
        for case, reason in passing["excluded"].items():
            print(f"excluded {case}: {reason}")
    warnings = table[table["severity"] == "warning"]
    print(f"QC passed: {len(args.tables)} cases checked, {len(table)} rows, {len(warnings)} warning(s) in "
          f"{warnings['case'].nunique()} case(s)")
    for check, count in warnings["check"].value_counts().items():
        print(f"  warning {check}: {count} case(s)")


def cmd_make_splits(args):
    from workflow_scripts.splits import write_splits

    splits = write_splits(args.cases, Path(args.labels_dir), _json(args.labels), args.n_folds, args.seed,
                          Path(args.out), Path(args.patients) if args.patients else None)
    for k, fold in enumerate(splits):
        print(f"fold {k}: {len(fold['train'])} train, {len(fold['val'])} val: {', '.join(fold['val'])}")


def cmd_convert_dataset(args):
    from workflow_scripts.nnunet_dataset import convert_dataset

    summary = convert_dataset(args.cases, Path(args.images_dir), Path(args.labels_dir),
                              Path(args.nnunet_root) / "nnUNet_raw", args.dataset_id, args.name,
                              _json(args.label_mapping), Path(args.out))
    print(f"wrote {summary['folder']} with {len(summary['cases'])} cases")


def cmd_plan_and_preprocess(args):
    _nnunet(args, augmentation_workers=args.threads)  # the planner sizes torch threads by this value
    from workflow_scripts.planning import plan_and_preprocess

    summary = plan_and_preprocess(args.dataset_id, args.planner, _json(args.target_spacing),
                                  _json(args.plans_overrides), Path(args.splits), args.threads, Path(args.out))
    print(json.dumps(summary, indent=2))


def cmd_train_fold(args):
    _nnunet(args)
    from workflow_scripts.training import train_fold

    from workflow_scripts.io import read_json

    plans = read_json(args.plans_summary)
    summary = train_fold(plans["dataset"], plans["plans_identifier"], args.trainer, args.fold,
                         _json(args.settings), args.device, Path(args.out),
                         Path(args.curves) if args.curves else None, Path(args.progress) if args.progress else None,
                         _json(args.validation))
    print(f"fold {args.fold}: {summary['epochs']} epochs, resumed from {summary['resumed_from']}")


def cmd_gather_oof(args):
    from workflow_scripts.prediction import gather_out_of_fold

    labels = _json(args.class_label_values)
    for configuration, summaries in _json(args.training_summaries).items():
        folder = gather_out_of_fold([Path(p) for p in summaries], labels[configuration], args.case, Path(args.image),
                                    Path(args.out_dir) / configuration)
        print(f"{args.case}: {configuration} out-of-fold probabilities from {folder}")


def cmd_predict(args):
    _nnunet(args)
    from workflow_scripts.io import read_json
    from workflow_scripts.prediction import predict_new_cases

    labels = _json(args.channel_labels)
    if args.bundle:  # a bundle's models: their files checked against the manifest before use
        from workflow_scripts.bundle import BundleError, verify_files
        from workflow_scripts.config import BUNDLE_MANIFEST

        manifest = read_json(Path(args.bundle) / BUNDLE_MANIFEST)["configurations"]
        models = {}
        for name in args.configurations:
            try:
                checked = verify_files(Path(args.bundle), f"models/{name}/")
            except BundleError as err:
                sys.exit(f"error: {err}")
            print(f"bundle: {checked} model files of {name} match the manifest", flush=True)
            models[name] = {"folder": Path(args.bundle) / "models" / name, "folds": manifest[name]["folds"],
                            "labels": labels[name]}
    else:
        summaries = _json(args.training_summaries)
        models = {}
        for name in args.configurations:
            folds = [read_json(p) for p in summaries[name]]
            models[name] = {"folder": Path(folds[0]["output_folder"]).parent, "folds": [f["fold"] for f in folds],
                            "labels": labels[name]}
    settings = _json(args.settings)
    selection = read_json(args.selection)
    print(f"{len(args.cases)} cases, ensemble {selection.get('candidate', selection['members'])}, settings {settings}",
          flush=True)
    predict_new_cases(models, selection, args.cases, Path(args.images_dir), Path(args.out_dir), settings,
                      args.device, args.threads)


def cmd_export_bundle(args):
    from workflow_scripts.bundle import export_bundle

    summaries = {name: [Path(p) for p in paths] for name, paths in _json(args.training_summaries).items()}
    manifest = export_bundle(Path(args.out), _json(args.config), Path(args.selection), Path(args.refinement),
                             summaries, _json(args.channel_labels))
    size = sum(p.stat().st_size for p in Path(args.out).rglob("*") if p.is_file())
    print(f"bundle {args.out}: configurations {list(manifest['configurations'])}, {len(manifest['files'])} files, "
          f"{size / 1e6:.1f} MB")


def cmd_ensemble_case(args):
    from workflow_scripts.ensemble import ensemble_case

    from workflow_scripts.io import read_json

    selection = read_json(args.selection)
    print(f"{args.case}: ensemble {selection['candidate']}")
    ensemble_case(selection, Path(args.predictions_dir), Path(args.image), Path(args.out_dir), args.case)


def cmd_select_ensemble(args):
    from workflow_scripts.ensemble_selection import select_ensemble

    select_ensemble(_json(args.settings), args.cases, Path(args.oof_dir), Path(args.references_dir),
                    Path(args.out_table), Path(args.out_selection))


def cmd_segment_anatomy(args):
    from workflow_scripts.anatomy import segment_anatomy

    segment_anatomy(Path(args.image), Path(args.out), Path(args.home), args.task, args.fast,
                    _json(args.roi_subset), args.device, args.threads)


def cmd_refine_case(args):
    from workflow_scripts.refinement import refine_case

    from workflow_scripts.io import read_json

    rules = _json(args.rules) if args.rules else read_json(args.selection)["rules"]
    print(f"{args.case}: rules {[r['name'] for r in rules] or 'none'}")
    removed = refine_case(args.case, Path(args.segmentation), Path(args.anatomy) if args.anatomy else None,
                          Path(args.image), rules, args.task, Path(args.out), Path(args.removed))
    print(f"{args.case}: removed {len(removed)} component(s)")


def cmd_tumour_burden(args):
    from workflow_scripts.burden import write_burden
    from workflow_scripts.refinement import anatomy_class_ids

    anatomy = {case: Path(p) if p else None for case, p in _json(args.anatomy).items()}
    names = {i: name for name, i in anatomy_class_ids(args.task).items()}
    burden = write_burden(args.cases, Path(args.segmentation_dir), anatomy, _json(args.classes), names,
                          Path(args.out_lesions), Path(args.out_burden))
    print(f"{len(burden)} case(s), {burden['total_ml'].sum():.1f} ml of lesions in all")


def cmd_select_refinement(args):
    from workflow_scripts.refinement_selection import select_refinement

    select_refinement(_json(args.settings), args.cases, Path(args.segmentation_dir),
                      {case: Path(p) for case, p in _json(args.anatomy).items()}, Path(args.images_dir),
                      Path(args.references_dir), Path(args.out_table), Path(args.out_selection))


def cmd_nested_selection(args):
    from workflow_scripts.io import read_json
    from workflow_scripts.nested_selection import nested_selection

    folds = [split["val"] for split in read_json(args.splits)]
    nested_selection(_json(args.ensemble_settings), _json(args.refinement_settings), folds, Path(args.oof_dir),
                     Path(args.references_dir), {case: Path(p) for case, p in _json(args.anatomy).items()},
                     Path(args.images_dir), Path(args.out_dir), Path(args.out_table))


def cmd_evaluate_stage(args):
    from workflow_scripts.evaluation import evaluate_stage
    from workflow_scripts.io import write_table
    from workflow_scripts.metrics import Conventions

    conventions = Conventions.from_settings(_json(args.settings))
    print(f"conventions: {conventions.describe()}")
    table = evaluate_stage(args.split, args.stage, args.cases, Path(args.prediction_dir),
                           Path(args.reference_dir), _json(args.classes), conventions)
    write_table(table, Path(args.out))


def cmd_summarize_metrics(args):
    import pandas as pd

    from workflow_scripts.evaluation import write_summary
    from workflow_scripts.metrics import Conventions

    settings = _json(args.settings)
    biased = [stage for stage in args.selection_biased.split(",") if stage]
    tables = write_summary([Path(p) for p in args.tables], Path(args.out_dir), Conventions.from_settings(settings),
                           worst_per_stage=settings.get("worst_cases", 3), selection_biased=biased)
    with pd.option_context("display.width", 200, "display.max_columns", 12):
        print(tables["pinkcc"].drop(columns="convention").to_string(index=False))
        summary = tables["summary"]
        print(summary[summary["metric"].isin(["dice", "hd95_mm"])].drop(columns="convention").to_string(index=False))


def cmd_summarize_runtime(args):
    from workflow_scripts.runtime import write_runtime

    paths = sorted(Path(args.benchmarks).rglob("*.tsv"))
    summary = write_runtime(paths, Path(args.jobs), Path(args.summary), Path(args.figure))
    print(summary.to_string(index=False))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workflow_scripts", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    def verb(name, func, nnunet=False):
        p = verbs.add_parser(name)
        p.set_defaults(func=func)
        if nnunet:
            p.add_argument("--nnunet-root", required=True)
            p.add_argument("--threads", type=int, default=1)
            p.add_argument("--augmentation-workers", type=int, default=0)
        return p

    p = verb("make-toy-data", cmd_make_toy_data)
    p.add_argument("--out", required=True)
    p.add_argument("--n-train", type=int, default=12)
    p.add_argument("--n-test", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dicom-cases", nargs="*", default=["toy_011", "toy_102"],
                   help="cases written as DICOM series folders (default: one training and one new case)")

    p = verb("qc-case", cmd_qc_case)
    p.add_argument("--case", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--label")
    p.add_argument("--label-values", type=int, nargs="+", required=True)
    p.add_argument("--settings", help="the config's qc section as JSON (default: the schema's defaults)")
    p.add_argument("--out", required=True)
    p.add_argument("--measurements", help="JSON file for the case's measurements (dataset summary)")
    p.add_argument("--dicom-findings", help="JSON findings of the case's DICOM conversion (convert-dicom)")

    p = verb("convert-dicom", cmd_convert_dicom)
    p.add_argument("--case", required=True)
    p.add_argument("--folder", required=True, help="the case's DICOM folder (searched recursively)")
    p.add_argument("--settings", help="the config's data.dicom section as JSON (default: the schema's defaults)")
    p.add_argument("--out", required=True, help="NIfTI image to write")
    p.add_argument("--findings", required=True, help="JSON findings for QC to write")

    p = verb("qc-aggregate", cmd_qc_aggregate)
    p.add_argument("--out", required=True)
    p.add_argument("--exclude", default="{}", help="JSON {case: reason} (config qc.exclude)")
    p.add_argument("--allow", default="{}", help="JSON {case: [check]} (config qc.allow)")
    p.add_argument("--orphan-labels", default="{}", help="JSON {case: label path} of labels without an image")
    p.add_argument("--misnamed", default="{}", help="JSON {name: path} of images named off the case pattern")
    p.add_argument("--case-pattern", default="", help="config data.case_pattern, for the message")
    p.add_argument("--measurements", nargs="+", help="the cases' QC measurement JSON files (dataset summary)")
    p.add_argument("--splits", default="{}", help="JSON {case: split} for the summary")
    p.add_argument("--labels", default="{}", help="JSON {name: value} of the labels")
    p.add_argument("--summary", help="dataset summary TSV to write")
    p.add_argument("--figure", help="dataset figure PNG to write")
    p.add_argument("--tables", nargs="+", required=True, help="the cases' QC tables")
    p.add_argument("--on-error", choices=["stop", "exclude"], default="stop", help="config qc.on_error")
    p.add_argument("--passing", help="JSON to write: the cases of each split that go on, and the excluded ones")

    p = verb("make-splits", cmd_make_splits)
    p.add_argument("--cases", nargs="+", required=True)
    p.add_argument("--labels-dir", required=True)
    p.add_argument("--labels", required=True, help="JSON {name: value}")
    p.add_argument("--n-folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patients", help="TSV with columns case and patient; a patient's cases share a fold")
    p.add_argument("--out", required=True)

    p = verb("convert-dataset", cmd_convert_dataset)
    p.add_argument("--nnunet-root", required=True)
    p.add_argument("--cases", nargs="+", required=True)
    p.add_argument("--images-dir", required=True)
    p.add_argument("--labels-dir", required=True)
    p.add_argument("--dataset-id", type=int, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--label-mapping", required=True, help="JSON {class: [source labels]}")
    p.add_argument("--out", required=True)

    p = verb("plan-and-preprocess", cmd_plan_and_preprocess, nnunet=True)
    p.add_argument("--dataset-id", type=int, required=True)
    p.add_argument("--planner", required=True)
    p.add_argument("--target-spacing", default="null", help="JSON: null, \"isotropic\" or [z, y, x]")
    p.add_argument("--plans-overrides", default="{}", help="JSON")
    p.add_argument("--splits", required=True)
    p.add_argument("--out", required=True)

    p = verb("train-fold", cmd_train_fold, nnunet=True)
    p.add_argument("--plans-summary", required=True, help="JSON written by plan-and-preprocess")
    p.add_argument("--trainer", required=True)
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--settings", default="{}", help="JSON trainer settings")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)
    p.add_argument("--curves", help="TSV of per-epoch losses and pseudo Dice")
    p.add_argument("--progress", help="copy of nnU-Net's progress.png")
    p.add_argument("--validation", default="{}",
                   help='JSON {"tile_step_size": .., "use_mirroring": ..} of the validation (default nnU-Net\'s)')

    p = verb("gather-oof", cmd_gather_oof)
    p.add_argument("--training-summaries", required=True, help="JSON {configuration: [fold summary JSON]}")
    p.add_argument("--class-label-values", required=True, help="JSON {configuration: [label value per channel]}")
    p.add_argument("--case", required=True)
    p.add_argument("--image", required=True, help="the case's image (the grid of the outputs)")
    p.add_argument("--out-dir", required=True, help="gets <configuration>/<case>.{npz,nii.gz}")

    p = verb("export-bundle", cmd_export_bundle)
    p.add_argument("--config", required=True, help="the study's validated configuration as JSON")
    p.add_argument("--selection", required=True, help="the chosen ensemble (results/ensemble/selected.json)")
    p.add_argument("--refinement", required=True, help="the chosen rules (results/refinement/selected_rules.json)")
    p.add_argument("--training-summaries", required=True, help="JSON {configuration: [fold summary JSON]}")
    p.add_argument("--channel-labels", required=True, help="JSON {configuration: [label value per channel]}")
    p.add_argument("--out", required=True)

    p = verb("predict", cmd_predict, nnunet=True)
    models = p.add_mutually_exclusive_group(required=True)
    models.add_argument("--training-summaries", help="JSON {configuration: [fold summary JSON]} (a study's models)")
    models.add_argument("--bundle", help="an exported bundle")
    p.add_argument("--configurations", nargs="+", required=True)
    p.add_argument("--selection", required=True, help="the chosen ensemble (JSON)")
    p.add_argument("--channel-labels", required=True, help="JSON {configuration: [label value per channel]}")
    p.add_argument("--settings", required=True, help="JSON: the config's prediction section")
    p.add_argument("--cases", nargs="+", required=True)
    p.add_argument("--images-dir", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--out-dir", required=True)

    p = verb("select-ensemble", cmd_select_ensemble)
    p.add_argument("--settings", required=True, help="JSON: members, fusions, select, strategies, metric, "
                   "classes, conventions")
    p.add_argument("--cases", nargs="+", required=True)
    p.add_argument("--oof-dir", required=True, help="holds <configuration>/<case>.npz")
    p.add_argument("--references-dir", required=True)
    p.add_argument("--out-table", required=True)
    p.add_argument("--out-selection", required=True)

    p = verb("ensemble-case", cmd_ensemble_case)
    p.add_argument("--case", required=True)
    p.add_argument("--selection", required=True, help="JSON file written by select-ensemble")
    p.add_argument("--predictions-dir", required=True, help="holds <configuration>/<case>.npz")
    p.add_argument("--image", required=True)
    p.add_argument("--out-dir", required=True)

    p = verb("segment-anatomy", cmd_segment_anatomy)
    p.add_argument("--image", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--home", required=True)
    p.add_argument("--task", default="total")
    p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--roi-subset", default="null", help="JSON list or null")
    p.add_argument("--device", default="gpu")
    p.add_argument("--threads", type=int, default=1)

    p = verb("refine-case", cmd_refine_case)
    p.add_argument("--case", required=True)
    p.add_argument("--segmentation", required=True)
    p.add_argument("--anatomy")
    p.add_argument("--image", required=True)
    rules = p.add_mutually_exclusive_group(required=True)
    rules.add_argument("--rules", help="JSON list of rules")
    rules.add_argument("--selection", help="JSON file written by select-refinement (its 'rules')")
    p.add_argument("--task", default="total")
    p.add_argument("--out", required=True)
    p.add_argument("--removed", required=True)

    p = verb("select-refinement", cmd_select_refinement)
    p.add_argument("--settings", required=True, help="JSON: rules, apply, metric, task, classes, conventions")
    p.add_argument("--cases", nargs="+", required=True)
    p.add_argument("--segmentation-dir", required=True, help="the out-of-fold ensemble's <case>.nii.gz")
    p.add_argument("--anatomy", required=True, help="JSON {case: anatomy map path}")
    p.add_argument("--images-dir", required=True)
    p.add_argument("--references-dir", required=True)
    p.add_argument("--out-table", required=True)
    p.add_argument("--out-selection", required=True)

    p = verb("nested-selection", cmd_nested_selection)
    p.add_argument("--ensemble-settings", required=True, help="JSON, as select-ensemble's --settings")
    p.add_argument("--refinement-settings", required=True, help="JSON, as select-refinement's --settings")
    p.add_argument("--splits", required=True, help="splits_final.json: each fold's held-out cases under 'val'")
    p.add_argument("--oof-dir", required=True, help="holds <configuration>/<case>.npz")
    p.add_argument("--anatomy", required=True, help="JSON {case: anatomy map path}")
    p.add_argument("--images-dir", required=True)
    p.add_argument("--references-dir", required=True)
    p.add_argument("--out-dir", required=True, help="folder of the oof_nested segmentations")
    p.add_argument("--out-table", required=True, help="TSV: per fold the choices and their inner scores")

    p = verb("tumour-burden", cmd_tumour_burden)
    p.add_argument("--cases", nargs="+", required=True)
    p.add_argument("--segmentation-dir", required=True)
    p.add_argument("--anatomy", default="{}", help="JSON {case: anatomy map path or null}")
    p.add_argument("--classes", required=True, help="JSON {class name: label value}")
    p.add_argument("--task", default="total")
    p.add_argument("--out-lesions", required=True)
    p.add_argument("--out-burden", required=True)

    p = verb("evaluate-stage", cmd_evaluate_stage)
    p.add_argument("--split", required=True)
    p.add_argument("--stage", required=True)
    p.add_argument("--cases", nargs="+", required=True)
    p.add_argument("--prediction-dir", required=True)
    p.add_argument("--reference-dir", required=True)
    p.add_argument("--classes", required=True, help="JSON {name: label}")
    p.add_argument("--settings", default="{}", help="JSON of the config's evaluation section")
    p.add_argument("--out", required=True)

    p = verb("summarize-metrics", cmd_summarize_metrics)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--settings", default="{}", help="JSON of the config's evaluation section")
    p.add_argument("--selection-biased", default="",
                   help="comma-separated stages chosen on their own out-of-fold cases (optimistic oof scores)")
    p.add_argument("tables", nargs="+")

    p = verb("summarize-runtime", cmd_summarize_runtime)
    p.add_argument("--benchmarks", required=True, help="folder of Snakemake benchmark files")
    p.add_argument("--jobs", required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--figure", required=True)
    return parser


def main(argv=None) -> None:
    # Rule logs are files: flush every line so progress is visible and a killed job loses nothing.
    sys.stdout.reconfigure(line_buffering=True)
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":  # nnU-Net's spawn pools re-import the main module
    main()
