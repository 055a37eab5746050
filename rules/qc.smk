# Quality control of every input case, then one table; the run stops naming each case with an error (or, with
# qc.on_error: exclude, leaves failing training cases out: a checkpoint, as the later case lists depend on it);
# warnings are listed and never block.


rule qc_case:
    input:
        image=lambda w: image_path(w.case),
        dicom=lambda w: (
            [f"results/qc/dicom/{INPUT_FOLDERS[case_split(w.case)]}/{w.case}.json"] if w.case in DICOM_CASES else []
        ),
    output:
        table="results/qc/cases/{case}.tsv",
        measurements="results/qc/cases/{case}.json",
    log:
        "logs/qc_case/{case}.log",
    benchmark:
        "results/benchmarks/qc_case/{case}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("qc_case")
    resources:
        **resources_of("qc_case"),
    params:
        label=lambda w: (
            flag_args("--label", [f"{reference_dir(case_split(w.case))}/{w.case}.nii.gz"])
            if reference_dir(case_split(w.case))
            else []
        ),
        settings=settings_json("qc-case"),
        dicom=lambda w, input: flag_args("--dicom-findings", input.dicom),
        anatomy=lambda w: flag_args(
            "--anatomy", [anatomy_map(w.case)] if CONFIG["anatomy"]["source"] == "precomputed" else []
        ),
    shell:
        "python -m workflow_scripts qc-case --case {wildcards.case:q} --image {input.image:q} {params.label:q} "
        "--settings {params.settings:q} --out {output.table:q} "
        "--measurements {output.measurements:q} {params.dicom:q} {params.anatomy:q} > {log:q} 2>&1"


rule qc_report:
    input:
        tables=expand("results/qc/cases/{case}.tsv", case=TRAIN_CASES + TEST_CASES),
        measurements=expand("results/qc/cases/{case}.json", case=TRAIN_CASES + TEST_CASES),
    output:
        table=report("results/qc/qc_table.tsv", caption="report/qc.rst", category="Quality control"),
        summary=report("results/qc/dataset_summary.tsv", caption="report/qc_dataset.rst", category="Quality control"),
        figure=report("results/qc/dataset.png", caption="report/qc_dataset.rst", category="Quality control"),
    log:
        "logs/qc_report.log",
    conda:
        "../envs/workflow.yaml"
    params:
        settings=settings_json("qc-aggregate"),
        orphan_labels=as_json(ORPHAN_LABELS),
        misnamed=as_json({name: path for name, (split, path) in MISNAMED.items()}),
        splits=as_json(QC_SPLITS),
    shell:
        "python -m workflow_scripts qc-aggregate --out {output.table:q} --settings {params.settings:q} "
        "--orphan-labels {params.orphan_labels:q} "
        "--misnamed {params.misnamed:q} --tables {input.tables:q} "
        "--measurements {input.measurements:q} --splits {params.splits:q} "
        "--summary {output.summary:q} --figure {output.figure:q} > {log:q} 2>&1"


# Its own job, so that the QC table, summary and figure stay when it stops the run.
checkpoint qc_gate:
    input:
        "results/qc/qc_table.tsv",
    output:
        "results/qc/passing_cases.json",
    log:
        "logs/qc_gate.log",
    conda:
        "../envs/workflow.yaml"
    params:
        settings=settings_json("qc-gate"),
        splits=as_json(QC_SPLITS),
    shell:
        "python -m workflow_scripts qc-gate --table {input:q} --settings {params.settings:q} --splits {params.splits:q} "
        "--passing {output:q} > {log:q} 2>&1 || (cat {log:q} >&2; exit 1)"


# After QC: each reference label against its case's anatomy map (rules in qc.anatomy_rules); flagged labels get a
# proposed flip or shift for review, never applied. Warnings only: training does not wait for it.
rule qc_anatomy:
    input:
        qc=QC_PASSED,
        image=lambda w: image_path(w.case),
        label=lambda w: case_references([w.case]),
        anatomy=lambda w: anatomy_maps([w.case]),
    output:
        table="results/qc/anatomy/{case}.tsv",
        proposal=directory("results/qc/anatomy/{case}_proposal"),
    log:
        "logs/qc_anatomy/{case}.log",
    benchmark:
        "results/benchmarks/qc_anatomy/{case}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("qc_anatomy")
    resources:
        **resources_of("qc_anatomy"),
    params:
        settings=settings_json("qc-anatomy"),
    shell:
        "python -m workflow_scripts qc-anatomy --case {wildcards.case:q} --image {input.image:q} --label {input.label:q} "
        "--anatomy {input.anatomy:q} --settings {params.settings:q} --out {output.table:q} --proposal-dir {output.proposal:q} > {log:q} 2>&1"


rule qc_anatomy_report:
    input:
        tables=lambda w: [f"results/qc/anatomy/{case}.tsv" for case in labelled_cases()],
        proposals=lambda w: [f"results/qc/anatomy/{case}_proposal" for case in labelled_cases()],
        images=lambda w: [image_path(case) for case in labelled_cases()],
        labels=lambda w: case_references(labelled_cases()),
        qc="results/qc/qc_table.tsv",
    output:
        table=report("results/qc/anatomy_table.tsv", caption="report/qc_anatomy.rst", category="Quality control"),
        figure=report("results/qc/flagged_labels.png", caption="report/qc_anatomy.rst", category="Quality control"),
    log:
        "logs/qc_anatomy_report.log",
    conda:
        "../envs/workflow.yaml"
    params:
        settings=settings_json("qc-anatomy-report"),
    shell:
        "python -m workflow_scripts qc-anatomy-report --tables {input.tables:q} --proposals {input.proposals:q} "
        "--images {input.images:q} --labels {input.labels:q} --qc-table {input.qc:q} --settings {params.settings:q} "
        "--out {output.table:q} --figure {output.figure:q} > {log:q} 2>&1"
