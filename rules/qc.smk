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
    shell:
        "python -m workflow_scripts qc-case --case {wildcards.case} --image {input.image} {params.label} "
        "--label-values {params.label_values} --settings {params.settings:q} --out {output.table} "
        "--measurements {output.measurements} {params.dicom} > {log} 2>&1"


checkpoint qc_report:
    input:
        tables=expand("results/qc/cases/{case}.tsv", case=TRAIN_CASES + TEST_CASES),
        measurements=expand("results/qc/cases/{case}.json", case=TRAIN_CASES + TEST_CASES),
    output:
        table=report("results/qc/qc_table.tsv", caption="report/qc.rst", category="Quality control"),
        summary=report("results/qc/dataset_summary.tsv", caption="report/qc_dataset.rst", category="Quality control"),
        figure=report("results/qc/dataset.png", caption="report/qc_dataset.rst", category="Quality control"),
        cases="results/qc/passing_cases.json",
    log:
        "logs/qc_report.log",
    conda:
        "../envs/workflow.yaml"
    params:
        settings=as_json(CONFIG["qc"]),
        orphan_labels=as_json(ORPHAN_LABELS),
        misnamed=as_json({name: path for name, (split, path) in MISNAMED.items()}),
        pattern=CONFIG["data"]["case_pattern"],
        splits=as_json(
            {
                **{c: "train" for c in TRAIN_CASES},
                **{c: "test" for c in TEST_CASES},
                **{name: split for name, (split, path) in MISNAMED.items()},
            }
        ),
        labels=as_json(CONFIG["labels"]),
    shell:
        "python -m workflow_scripts qc-aggregate --out {output.table} --settings {params.settings:q} "
        "--orphan-labels {params.orphan_labels:q} "
        "--misnamed {params.misnamed:q} --case-pattern {params.pattern:q} --tables {input.tables} "
        "--measurements {input.measurements} --splits {params.splits:q} --labels {params.labels:q} "
        "--summary {output.summary} --figure {output.figure} --passing {output.cases} > {log} 2>&1 || (cat {log} >&2; exit 1)"
