# Per configuration: out-of-fold probabilities of each training case from the fold that held it out. New cases:
# one job predicts every configuration with all folds (models loaded once, cases streamed) and builds the chosen
# ensemble in memory.


rule gather_oof:
    input:
        summaries=lambda w: [s for c in CONFIGURATIONS for s in training_summaries(c)],
        image=lambda w: image_path(w.case),
    output:
        npz=expand("results/predictions/oof/{configuration}/{{case}}.npz", configuration=CONFIGURATIONS),
        seg=expand("results/predictions/oof/{configuration}/{{case}}.nii.gz", configuration=CONFIGURATIONS),
    log:
        "logs/gather_oof/{case}.log",
    benchmark:
        "benchmarks/gather_oof/{case}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("gather_oof")
    resources:
        **resources_of("gather_oof"),
    params:
        summaries=lambda w: as_json({c: training_summaries(c) for c in CONFIGURATIONS}),
        channel_labels=lambda w: as_json({c: channel_labels(c) for c in CONFIGURATIONS}),
    shell:
        "python -m workflow_scripts gather-oof --training-summaries {params.summaries:q} "
        "--class-label-values {params.channel_labels:q} --case {wildcards.case} --image {input.image} "
        "--out-dir results/predictions/oof > {log} 2>&1"


rule predict_test:
    input:
        models=model_inputs(),
        selection=chosen_ensemble(),
        images=[image_path(case) for case in TEST_CASES],
    output:
        expand(
            "results/predictions/test/{stage}/{case}.{ext}",
            stage=CONFIGURATIONS + ["ensemble"],
            case=TEST_CASES,
            ext=["npz", "nii.gz"] if CONFIG["prediction"]["save_probabilities"] else ["nii.gz"],
        ),
    log:
        "logs/predict_test.log",
    benchmark:
        "benchmarks/predict_test.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("predict_test")
    resources:
        **resources_of("predict_test"),
    params:
        nnunet_root=NNUNET_ROOT,
        images_dir=lambda w, input: os.path.dirname(input.images[0]),
        models=model_arguments(),
        configurations=" ".join(CONFIGURATIONS),
        channel_labels=as_json({c: channel_labels(c) for c in CONFIGURATIONS}),
        cases=" ".join(TEST_CASES),
        device=CONFIG["compute"]["device"],
        settings=as_json(CONFIG["prediction"]),
    shell:
        "python -m workflow_scripts predict --nnunet-root {params.nnunet_root} --threads {threads} {params.models} "
        "--configurations {params.configurations} --selection {input.selection} "
        "--channel-labels {params.channel_labels:q} --settings {params.settings:q} --cases {params.cases} "
        "--images-dir {params.images_dir} --device {params.device} --out-dir results/predictions/test > {log} 2>&1"
