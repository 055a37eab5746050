# Per configuration: out-of-fold probabilities of each training case from the fold that held it out. New cases:
# one job predicts every configuration with all folds (models loaded once, cases streamed) and builds the chosen
# ensemble in memory.


rule gather_oof:
    input:
        summaries=lambda w: [s for c in CONFIGURATIONS for s in training_summaries(c)],
        image=lambda w: image_path(w.case),
        box=lambda w: crop_boxes([w.case]),
    output:
        npz=[prediction("oof", c, "{case}", "npz") for c in CONFIGURATIONS],
        seg=[prediction("oof", c, "{case}") for c in CONFIGURATIONS],
    log:
        "logs/gather_oof/{case}.log",
    benchmark:
        "results/benchmarks/gather_oof/{case}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("gather_oof")
    resources:
        **resources_of("gather_oof"),
    params:
        summaries=lambda w: as_json({c: training_summaries(c) for c in CONFIGURATIONS}),
        settings=settings_json("gather-oof", CONFIGURATIONS),
        box=lambda w, input: flag_args("--crop-box", input.box),
    shell:
        "python -m workflow_scripts gather-oof --training-summaries {params.summaries:q} "
        "--settings {params.settings:q} --case {wildcards.case:q} --image {input.image:q} {params.box:q} "
        "--out {output.npz:q} > {log:q} 2>&1"


rule predict_test:
    input:
        qc=QC_PASSED,
        models=model_inputs(),
        selection=chosen_ensemble(),
        images=lambda w: [image_path(case) for case in part_cases(int(w.part))],
        cropped=lambda w: [model_image(case) for case in part_cases(int(w.part))] if CROP else [],
        boxes=lambda w: crop_boxes(part_cases(int(w.part))),
    output:
        directory(f"{PREDICTIONS}/test_parts/{{part}}"),
    log:
        "logs/predict_test/{part}.log",
    benchmark:
        "results/benchmarks/predict_test/{part}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("predict_test")
    resources:
        **resources_of("predict_test"),
        tile_batch_divisor=tile_batch_divisor,
    params:
        nnunet_root=NNUNET_ROOT,
        models=model_arguments(),
        configurations=CONFIGURATIONS,
        settings=settings_json("predict", CONFIGURATIONS),
        crops=lambda w, input: flag_args("--cropped-images", input.cropped) + flag_args("--crop-boxes", input.boxes),
    shell:
        "python -m workflow_scripts predict --nnunet-root {params.nnunet_root:q} --threads {threads} {params.models:q} "
        "--configurations {params.configurations:q} --selection {input.selection:q} "
        "--settings {params.settings:q} --images {input.images:q} {params.crops:q} --out-dir {output:q} "
        "--tile-batch-divisor {resources.tile_batch_divisor:q} > {log:q} 2>&1"


# Each new case's predictions, linked from its part's folder to where every later rule reads them.
rule place_predictions:
    input:
        lambda w: f"{PREDICTIONS}/test_parts/{case_part(w.case)}",
    output:
        [
            prediction("test", stage, "{case}", ext)
            for stage in CONFIGURATIONS + ["ensemble"]
            for ext in (["npz", "nii.gz"] if CONFIG["prediction"]["save_probabilities"] else ["nii.gz"])
        ],
    log:
        "logs/place_predictions/{case}.log",
    conda:
        "../envs/workflow.yaml"
    shell:
        "python -m workflow_scripts place-predictions --part-dir {input:q} --outputs {output:q} > {log:q} 2>&1"
