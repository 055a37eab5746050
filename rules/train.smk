# One nnU-Net training per (configuration, fold); resumes from its latest checkpoint when rerun.
# Snakemake clears the rule log of a rerun job; nnU-Net's training_log_*.txt (one per run) keep the history.


rule train_fold:
    input:
        plans="results/datasets/{configuration}/plans_summary.json",
        preflight=preflight_passed(),
    output:
        summary="results/training/{configuration}/fold_{fold}.json",
        curves=report(
            "results/training/{configuration}/fold_{fold}_curves.tsv",
            caption="report/training_curves.rst",
            category="Training",
            subcategory="{configuration}",
            labels={"fold": "{fold}", "kind": "table"},
        ),
        progress=report(
            "results/training/{configuration}/fold_{fold}_progress.png",
            caption="report/training_progress.rst",
            category="Training",
            subcategory="{configuration}",
            labels={"fold": "{fold}", "kind": "plot"},
        ),
    log:
        "logs/train_fold/{configuration}/fold_{fold}.log",
    benchmark:
        "results/benchmarks/train_fold/{configuration}/fold_{fold}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("train_fold")
    resources:
        **resources_of("train_fold"),
        tile_batch_divisor=tile_batch_divisor,
    params:
        nnunet_root=NNUNET_ROOT,
        settings=lambda w: settings_json("train-fold", [w.configuration]),
    shell:
        "python -m workflow_scripts train-fold --nnunet-root {params.nnunet_root:q} --threads {threads} "
        "--plans-summary {input.plans:q} --fold {wildcards.fold:q} --settings {params.settings:q} --out {output.summary:q} "
        "--curves {output.curves:q} --progress {output.progress:q} --tile-batch-divisor {resources.tile_batch_divisor:q} "
        "> {log:q} 2>&1"


rule plot_folds:
    input:
        lambda w: [
            f"results/training/{w.configuration}/fold_{k}_curves.tsv" for k in configuration(w.configuration)["folds"]
        ],
    output:
        report(
            "results/training/{configuration}/folds.png",
            caption="report/training_folds.rst",
            category="Training",
            subcategory="{configuration}",
            labels={"fold": "all", "kind": "plot"},
        ),
    log:
        "logs/plot_folds/{configuration}.log",
    conda:
        "../envs/workflow.yaml"
    shell:
        "python -m workflow_scripts plot-folds --configuration {wildcards.configuration:q} --curves {input:q} "
        "--out {output:q} > {log:q} 2>&1"
