# Export of a trained study for segmenting new cases elsewhere: the chosen ensemble's models (tensors only), plans,
# the chosen ensemble and refinement, the study's configuration and the model card. A run whose config names a bundle (config/predict.yaml)
# segments new cases with it and trains nothing.


rule export_bundle:
    input:
        summaries=lambda w: [s for c in ensemble_configurations() for s in training_summaries(c)],
        selection="results/ensemble/selected.json",
        refinement="results/refinement/selected_rules.json",
        measurements=expand("results/qc/cases/{case}.json", case=TRAIN_CASES),
        passing=QC_PASSED,
        dicom_findings=[f"results/qc/dicom/{INPUT_FOLDERS['oof']}/{c}.json" for c in TRAIN_CASES if c in DICOM_CASES],
        metrics="results/metrics/summary.tsv",
    output:
        directory("results/bundle"),
    log:
        "logs/export_bundle.log",
    conda:
        "../envs/workflow.yaml"
    params:
        settings=settings_json("export-bundle"),
        summaries=lambda w: as_json({c: training_summaries(c) for c in ensemble_configurations()}),
        dicom_findings=lambda w, input: flag_args("--dicom-findings", input.dicom_findings),
    shell:
        "python -m workflow_scripts export-bundle --settings {params.settings:q} --selection {input.selection:q} "
        "--refinement {input.refinement:q} --training-summaries {params.summaries:q} "
        "--qc-measurements {input.measurements:q} --passing-cases {input.passing:q} {params.dicom_findings:q} "
        "--metrics-summary {input.metrics:q} --out {output:q} > {log:q} 2>&1"
