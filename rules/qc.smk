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
        "benchmarks/qc_case/{case}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("qc_case")
    resources:
        **resources_of("qc_case"),
    params:
        label=lambda w: (
            f"--label {CONFIG['data']['labels_tr']}/{w.case}.nii.gz"
            if case_split(w.case) == "oof"
            else (f"--label {CONFIG['data']['labels_ts']}/{w.case}.nii.gz" if CONFIG["data"].get("labels_ts") else "")
        ),
        label_values=" ".join(str(v) for v in CONFIG["labels"].values()),
        settings=as_json(CONFIG["qc"]),
        dicom=lambda w, input: f"--dicom-findings {input.dicom[0]}" if input.dicom else "",
        anatomy=lambda w: (f"--anatomy {anatomy_map(w.case)}" if CONFIG["anatomy"]["source"] == "precomputed" else ""),
    shell:
        "python -m workflow_scripts qc-case --case {wildcards.case} --image {input.image} {params.label} "
        "--label-values {params.label_values} --settings {params.settings:q} --out {output.table} "
        "--measurements {output.measurements} {params.dicom} {params.anatomy} > {log} 2>&1"


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
        settings=as_json(CONFIG["qc"]),
        orphan_labels=as_json(ORPHAN_LABELS),
        misnamed=as_json({name: path for name, (split, path) in MISNAMED.items()}),
        pattern=CONFIG["data"]["case_pattern"],
        suffix=CONFIG["data"]["channel_suffix"],
        splits=as_json(QC_SPLITS),
        labels=as_json(CONFIG["labels"]),
    shell:
        "python -m workflow_scripts qc-aggregate --out {output.table} --settings {params.settings:q} "
        "--orphan-labels {params.orphan_labels:q} "
        "--misnamed {params.misnamed:q} --case-pattern {params.pattern:q} --channel-suffix={params.suffix:q} --tables {input.tables} "
        "--measurements {input.measurements} --splits {params.splits:q} --labels {params.labels:q} "
        "--summary {output.summary} --figure {output.figure} > {log} 2>&1"


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
        settings=as_json(CONFIG["qc"]),
        splits=as_json(QC_SPLITS),
    shell:
        "python -m workflow_scripts qc-gate --table {input} --settings {params.settings:q} --splits {params.splits:q} "
        "--passing {output} > {log} 2>&1 || (cat {log} >&2; exit 1)"


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
        "benchmarks/qc_anatomy/{case}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("qc_anatomy")
    resources:
        **resources_of("qc_anatomy"),
    params:
        settings=as_json(CONFIG["qc"]),
        label_values=" ".join(str(v) for v in CONFIG["labels"].values()),
        task=CONFIG["anatomy"]["task"],
    shell:
        "python -m workflow_scripts qc-anatomy --case {wildcards.case} --image {input.image} --label {input.label} "
        "--anatomy {input.anatomy} --label-values {params.label_values} --task {params.task} "
        "--settings {params.settings:q} --out {output.table} --proposal-dir {output.proposal} > {log} 2>&1"


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
        settings=as_json(CONFIG["qc"]),
    shell:
        "python -m workflow_scripts qc-anatomy-report --tables {input.tables} --proposals {input.proposals} "
        "--images {input.images} --labels {input.labels} --qc-table {input.qc} --settings {params.settings:q} "
        "--out {output.table} --figure {output.figure} > {log} 2>&1"
