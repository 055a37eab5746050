# Per case and class Dice of every stage, then one summary table and figure for the report.


rule evaluate_stage:
    input:
        predictions=lambda w: [prediction(w.split, w.stage, c) for c in cases(w.split)],
        references=lambda w: [f"{reference_dir(w.split)}/{c}.nii.gz" for c in cases(w.split)],
    output:
        report("results/metrics/{split}/{stage}.tsv", caption="report/metrics_stage.rst", category="Metrics",
               subcategory="{split}", labels={"split": "{split}", "stage": "{stage}"}),
    params:
        cases=lambda w: " ".join(cases(w.split)),
        classes=lambda w: as_json(stage_classes(w.stage)),
        reference_dir=lambda w: reference_dir(w.split),
        both_empty=CONFIG["evaluation"]["both_empty"],
    log:
        "logs/evaluate_stage/{split}/{stage}.log",
    conda:
        "../envs/workflow.yaml"
    shell:
        "python -m workflow_scripts evaluate-stage --split {wildcards.split} --stage {wildcards.stage} --cases {params.cases} "
        "--prediction-dir results/predictions/{wildcards.split}/{wildcards.stage} "
        "--reference-dir {params.reference_dir} --classes {params.classes:q} --both-empty {params.both_empty} "
        "--out {output} > {log} 2>&1"


rule summarize_metrics:
    input:
        expand("results/metrics/{split}/{stage}.tsv", split=EVALUATED_SPLITS, stage=STAGES),
    output:
        summary=report("results/metrics/summary.tsv", caption="report/metrics_summary.rst", category="Metrics"),
        figure=report("results/metrics/dice.png", caption="report/dice_figure.rst", category="Metrics"),
    log:
        "logs/summarize_metrics.log",
    conda:
        "../envs/workflow.yaml"
    shell:
        "python -m workflow_scripts summarize-metrics --out {output.summary} --figure {output.figure} {input} > {log} 2>&1"
