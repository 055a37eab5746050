# Before any training: the study's GPU path run briefly on train_fold's resources (on SLURM, a GPU node), its
# table kept, then a gate of its own that stops the run naming every failed check and its fix.


rule preflight_checks:
    input:
        plans=expand("results/datasets/{configuration}/plans_summary.json", configuration=CONFIGURATIONS),
        train_images=lambda w: images("oof"),
        test_images=lambda w: images("test"),
    output:
        report("results/preflight/preflight.tsv", caption="report/preflight.rst", category="Preflight"),
    log:
        "logs/preflight_checks.log",
    benchmark:
        "results/benchmarks/preflight_checks.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("preflight_checks")
    resources:
        **resources_of("preflight_checks"),
        tile_batch_divisor=tile_batch_divisor,
    params:
        nnunet_root=NNUNET_ROOT,
        settings=settings_json("preflight"),
        test_images=lambda w, input: flag_args("--test-images", input.test_images),
        totalseg_home=flag_args(
            "--totalseg-home",
            [CONFIG["anatomy"]["totalseg_home"]] if CONFIG["anatomy"]["source"] == "totalsegmentator" else [],
        ),
    shell:
        "python -m workflow_scripts preflight --nnunet-root {params.nnunet_root:q} --threads {threads} "
        "--plans-summaries {input.plans:q} --train-images {input.train_images:q} {params.test_images:q} {params.totalseg_home:q} "
        "--settings {params.settings:q} "
        "--tile-batch-divisor {resources.tile_batch_divisor:q} --out {output:q} > {log:q} 2>&1"


rule preflight_gate:
    input:
        "results/preflight/preflight.tsv",
    output:
        PREFLIGHT_PASSED,
    log:
        "logs/preflight_gate.log",
    conda:
        "../envs/workflow.yaml"
    shell:
        "python -m workflow_scripts preflight-gate --table {input:q} --out {output:q} > {log:q} 2>&1 "
        "|| (cat {log:q} >&2; exit 1)"


# The first command on a cluster: `snakemake --profile profiles/slurm --configfile <config> preflight`.
rule preflight:
    input:
        PREFLIGHT_PASSED,
