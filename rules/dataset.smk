# The shared split, the optional anatomy crop of each case, then per configuration: nnU-Net raw dataset,
# fingerprint, plans and preprocessing.


rule make_splits:
    input:
        qc=QC_PASSED,
        references=lambda w: references("oof"),
        patients=CONFIG["data"]["patients"] or [],
    output:
        "results/splits/splits_final.json",
    log:
        "logs/make_splits.log",
    conda:
        "../envs/workflow.yaml"
    params:
        labels=as_json(CONFIG["labels"]),
        settings=as_json(CONFIG["splits"]),
        patients=lambda w, input: f"--patients {input.patients}" if input.patients else "",
    shell:
        "python -m workflow_scripts make-splits --references {input.references} --labels {params.labels:q} "
        "--settings {params.settings:q} {params.patients} --out {output} > {log} 2>&1"


rule crop_case:
    input:
        image=lambda w: image_path(w.case),
        anatomy=lambda w: anatomy_maps([w.case]),
        qc=QC_PASSED,
    output:
        image="results/crop/{case}.nii.gz",
        box="results/crop/{case}.json",
    log:
        "logs/crop_case/{case}.log",
    benchmark:
        "benchmarks/crop_case/{case}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("crop_case")
    resources:
        **resources_of("crop_case"),
    params:
        settings=as_json(CONFIG["crop"]),
        task=CONFIG["anatomy"]["task"],
    shell:
        "python -m workflow_scripts crop-case --image {input.image} --anatomy {input.anatomy} "
        "--settings {params.settings:q} --task {params.task} --out-image {output.image} --out-box {output.box} "
        "> {log} 2>&1"


rule convert_dataset:
    input:
        qc=QC_PASSED,
        images=lambda w: [model_image(case) for case in cases("oof")],
        references=lambda w: references("oof"),
        boxes=lambda w: crop_boxes(cases("oof")),
    output:
        "results/datasets/{configuration}/dataset_summary.json",
    log:
        "logs/convert_dataset/{configuration}.log",
    benchmark:
        "benchmarks/convert_dataset/{configuration}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("convert_dataset")
    resources:
        **resources_of("convert_dataset"),
    params:
        nnunet_root=NNUNET_ROOT,
        settings=lambda w: as_json(configuration(w.configuration)),
        boxes=lambda w, input: crop_flag("--crop-boxes", input.boxes),
    shell:
        "python -m workflow_scripts convert-dataset --nnunet-root {params.nnunet_root} --images {input.images} "
        "--references {input.references} {params.boxes} --name {wildcards.configuration} "
        "--settings {params.settings:q} --out {output} > {log} 2>&1"


rule plan_and_preprocess:
    input:
        dataset="results/datasets/{configuration}/dataset_summary.json",
        splits="results/splits/splits_final.json",
    output:
        "results/datasets/{configuration}/plans_summary.json",
    log:
        "logs/plan_and_preprocess/{configuration}.log",
    benchmark:
        "benchmarks/plan_and_preprocess/{configuration}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("plan_and_preprocess")
    resources:
        **resources_of("plan_and_preprocess"),
    params:
        nnunet_root=NNUNET_ROOT,
        settings=lambda w: as_json(configuration(w.configuration)),
    shell:
        "python -m workflow_scripts plan-and-preprocess --nnunet-root {params.nnunet_root} --threads {threads} "
        "--settings {params.settings:q} --splits {input.splits} --out {output} > {log} 2>&1"
