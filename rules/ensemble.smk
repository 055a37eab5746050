# Ensemble of configurations on probabilities, per case: members averaged, partial models fused into a class.


rule ensemble_case:
    input:
        unpack(ensemble_inputs),
    output:
        npz="results/predictions/{split}/ensemble/{case}.npz",
        seg="results/predictions/{split}/ensemble/{case}.nii.gz",
    params:
        weights=" ".join(str(w) for w in CONFIG["ensemble"]["members"].values()),
        fusions=fusion_spec,
    threads: threads_of("ensemble_case")
    resources:
        **resources_of("ensemble_case"),
    log:
        "logs/ensemble_case/{split}/{case}.log",
    benchmark:
        "benchmarks/ensemble_case/{split}/{case}.tsv"
    conda:
        "../envs/workflow.yaml"
    shell:
        "python -m workflow_scripts ensemble-case --case {wildcards.case} --members {input.members} --weights {params.weights} "
        "--fusions {params.fusions:q} --image {input.image} "
        "--out-dir results/predictions/{wildcards.split}/ensemble > {log} 2>&1"
