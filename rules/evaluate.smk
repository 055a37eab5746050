# Metrics per case and class of every stage, then aggregates, stage comparisons, PINKCC scores, worst cases,
# figures, and runtime and memory per rule from the benchmark files, all in the report.


rule evaluate_stage:
    input:
        predictions=lambda w: stage_predictions(w.split, w.stage),
        references=lambda w: references(w.split),
    output:
        report(
            "results/metrics/{split}/{stage}.tsv",
            caption="report/metrics_stage.rst",
            category="Metrics",
            subcategory="Per case",
            labels={"split": "{split}", "stage": "{stage}"},
        ),
    log:
        "logs/evaluate_stage/{split}/{stage}.log",
    benchmark:
        "results/benchmarks/evaluate_stage/{split}/{stage}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("evaluate_stage")
    resources:
        **resources_of("evaluate_stage"),
    params:
        settings=lambda w: settings_json("evaluate-stage", [w.stage] if w.stage in CONFIGURATIONS else CONFIGURATIONS),
    shell:
        "python -m workflow_scripts evaluate-stage --split {wildcards.split:q} --stage {wildcards.stage:q} "
        "--predictions {input.predictions:q} --references {input.references:q} --settings {params.settings:q} "
        "--out {output:q} > {log:q} 2>&1"


rule summarize_metrics:
    input:
        metric_tables(),
    output:
        summary=report(
            "results/metrics/summary.tsv",
            caption="report/metrics_summary.rst",
            category="Metrics",
            subcategory="Summary",
        ),
        comparisons=report(
            "results/metrics/comparisons.tsv",
            caption="report/metrics_comparisons.rst",
            category="Metrics",
            subcategory="Summary",
        ),
        pinkcc=report(
            "results/metrics/pinkcc.tsv",
            caption="report/metrics_pinkcc.rst",
            category="Metrics",
            subcategory="Summary",
        ),
        worst=report(
            "results/metrics/worst_cases.tsv",
            caption="report/metrics_worst.rst",
            category="Metrics",
            subcategory="Summary",
        ),
        figure=report(
            "results/metrics/metrics.png",
            caption="report/metrics_figure.rst",
            category="Metrics",
            subcategory="Summary",
        ),
    log:
        "logs/summarize_metrics.log",
    conda:
        "../envs/workflow.yaml"
    params:
        settings=settings_json("summarize-metrics"),
    shell:
        "python -m workflow_scripts summarize-metrics --summary {output.summary:q} --settings {params.settings:q} "
        "{input:q} > {log:q} 2>&1"


rule summarize_runtime:
    input:
        # Every other target, so that this runs last and sees every job's benchmark file.
        lambda w: all_targets(runtime=False),
    output:
        jobs="results/runtime/jobs.tsv",
        summary=report("results/runtime/runtime.tsv", caption="report/runtime.rst", category="Runtime"),
        figure=report("results/runtime/runtime.png", caption="report/runtime.rst", category="Runtime"),
    log:
        "logs/summarize_runtime.log",
    conda:
        "../envs/workflow.yaml"
    params:
        benchmarks="results/benchmarks",  # every job's benchmark file, also of jobs run before this one
    shell:
        "python -m workflow_scripts summarize-runtime --benchmarks {params.benchmarks:q} --jobs {output.jobs:q} "
        "--summary {output.summary:q} --figure {output.figure:q} > {log:q} 2>&1"


# Pictures: every new case (refined, with its reference where given, and its burden), and the worst out-of-fold
# cases per class of the refined stage.
rule overlay_case:
    input:
        image=lambda w: image_path(w.case),
        prediction=prediction("test", "refined", "{case}"),
        reference=lambda w: case_references([w.case]) if CONFIG["data"].get("labels_ts") else [],
        burden="results/burden/test/burden.tsv",
    output:
        report(
            "results/overlays/test/{case}.png",
            caption="report/overlay_case.rst",
            category="Cases",
            subcategory="New cases",
            labels={"case": "{case}"},
        ),
    log:
        "logs/overlay_case/{case}.log",
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("overlay_case")
    resources:
        **resources_of("overlay_case"),
    params:
        settings=settings_json("overlay-case"),
    shell:
        "python -m workflow_scripts overlay-case --case {wildcards.case:q} --image {input.image:q} "
        "--prediction {input.prediction:q} --reference {input.reference:q} --settings {params.settings:q} "
        "--burden {input.burden:q} --out {output:q} > {log:q} 2>&1"


rule overlay_worst:
    input:
        worst="results/metrics/worst_cases.tsv",
        images=lambda w: images("oof"),
        predictions=lambda w: [prediction("oof", "refined", case) for case in cases("oof")],
        references=lambda w: references("oof"),
    output:
        report(
            directory("results/overlays/oof_worst"),
            patterns=["{name}.png"],
            caption="report/overlay_worst.rst",
            category="Cases",
            subcategory="Worst out-of-fold cases",
        ),
    log:
        "logs/overlay_worst.log",
    conda:
        "../envs/workflow.yaml"
    params:
        settings=settings_json("overlay-worst"),
    shell:
        "python -m workflow_scripts overlay-worst --worst {input.worst:q} --stage refined --images {input.images:q} "
        "--predictions {input.predictions:q} --references {input.references:q} --settings {params.settings:q} "
        "--out-dir {output:q} > {log:q} 2>&1"
