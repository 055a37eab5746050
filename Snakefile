# nnU-Net CT lesion segmentation: QC -> nnU-Net datasets and plans -> 5-fold training of each configuration
# -> out-of-fold and test predictions -> ensemble on probabilities -> anatomy refinement -> metrics and report.
# Run: snakemake --profile profiles/local --configfile config/toy.yaml   (see README.md)

from snakemake.utils import min_version

min_version("9.0")


report: "rules/report/workflow.rst"


include: "rules/common.smk"


envvars:
    "PYTHONPATH",  # set by common.smk to this checkout, passed on to every job


wildcard_constraints:
    case=_alternatives(TRAIN_CASES + TEST_CASES),
    configuration=_alternatives(CONFIGURATIONS),
    split="oof|test",
    fold=r"\d+",
    part=r"\d+",
    stage=_alternatives(STAGES + [NESTED_STAGE]),


# Light aggregations run where Snakemake runs, never as cluster jobs.
localrules:
    all,
    link_image,
    qc_report,
    qc_gate,
    preflight_gate,
    preflight,
    qc_anatomy_report,
    plot_folds,
    place_predictions,
    overlay_worst,
    make_splits,
    select_ensemble,
    nested_ensembles,
    select_refinement,
    nested_selection,
    export_bundle,
    summarize_metrics,
    summarize_runtime,


include: "rules/inputs.smk"
include: "rules/qc.smk"
include: "rules/dataset.smk"
include: "rules/preflight.smk"
include: "rules/train.smk"
include: "rules/predict.smk"
include: "rules/ensemble.smk"
include: "rules/refine.smk"
include: "rules/evaluate.smk"
include: "rules/bundle.smk"
include: "rules/dicom_results.smk"


onstart:
    if DICOM_RESULTS and NIFTI_TEST_CASES:
        print(
            f"dicom_results: {len(NIFTI_TEST_CASES)} new case(s) came as NIfTI ({', '.join(NIFTI_TEST_CASES[:3])}"
            f"{', ...' if len(NIFTI_TEST_CASES) > 3 else ''}): DICOM results are written only for DICOM series"
        )


onsuccess:
    print(
        "Workflow finished. Results: results/ (metrics: results/metrics/summary.tsv, QC: results/qc/qc_table.tsv).\n"
        "Report: snakemake --configfile <your config> --report results/report.html"
    )


rule all:
    default_target: True
    input:
        all_targets(),
