# Per configuration: out-of-fold probabilities of each training case from the fold that held it out, and new
# cases with all folds.


rule gather_oof:
    input:
        summaries=lambda w: training_summaries(w.configuration),
        image=lambda w: image_path(w.case),
    output:
        npz="results/predictions/oof/{configuration}/{case}.npz",
        seg="results/predictions/oof/{configuration}/{case}.nii.gz",
    params:
        channel_labels=lambda w: as_json(channel_labels(w.configuration)),
    threads: threads_of("gather_oof")
    resources:
        **resources_of("gather_oof"),
    log:
        "logs/gather_oof/{configuration}/{case}.log",
    benchmark:
        "benchmarks/gather_oof/{configuration}/{case}.tsv"
    conda:
        "../envs/workflow.yaml"
    shell:
        "python -m workflow_scripts gather-oof --training-summaries {input.summaries} "
        "--class-label-values {params.channel_labels:q} --case {wildcards.case} --image {input.image} "
        "--out-dir results/predictions/oof/{wildcards.configuration} > {log} 2>&1"


rule predict_test:
    input:
        models=lambda w: model_inputs(w.configuration),
        images=[image_path(case) for case in TEST_CASES],
    output:
        expand("results/predictions/test/{{configuration}}/{case}.{ext}", case=TEST_CASES, ext=["npz", "nii.gz"]),
    params:
        nnunet_root=NNUNET_ROOT,
        images_dir=lambda w, input: os.path.dirname(input.images[0]),
        models=lambda w: model_arguments(w.configuration),
        folds=lambda w: " ".join(str(f) for f in model_folds(w.configuration)),
        channel_labels=lambda w: as_json(channel_labels(w.configuration)),
        cases=" ".join(TEST_CASES),
        device=CONFIG["compute"]["device"],
        step=CONFIG["prediction"]["tile_step_size"],
        mirroring="--use-mirroring" if CONFIG["prediction"]["use_mirroring"] else "--no-use-mirroring",
    threads: threads_of("predict_test")
    resources:
        **resources_of("predict_test"),
    log:
        "logs/predict_test/{configuration}.log",
    benchmark:
        "benchmarks/predict_test/{configuration}.tsv"
    conda:
        "../envs/workflow.yaml"
    shell:
        "python -m workflow_scripts predict --nnunet-root {params.nnunet_root} --threads {threads} {params.models} "
        "--folds {params.folds} --cases {params.cases} --images-dir {params.images_dir} "
        "--class-label-values {params.channel_labels:q} --device {params.device} "
        "--tile-step-size {params.step} {params.mirroring} "
        "--out-dir results/predictions/test/{wildcards.configuration} > {log} 2>&1"
