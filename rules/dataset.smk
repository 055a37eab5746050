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
        settings=settings_json("make-splits"),
        patients=lambda w, input: flag_args("--patients", input.patients),
    shell:
        "python -m workflow_scripts make-splits --references {input.references:q} "
        "--settings {params.settings:q} {params.patients:q} --out {output:q} > {log:q} 2>&1"


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
        "results/benchmarks/crop_case/{case}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("crop_case")
    resources:
        **resources_of("crop_case"),
    params:
        settings=settings_json("crop-case"),
    shell:
        "python -m workflow_scripts crop-case --image {input.image:q} --anatomy {input.anatomy:q} "
        "--settings {params.settings:q} --out-image {output.image:q} --out-box {output.box:q} "
        "> {log:q} 2>&1"


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
        "results/benchmarks/convert_dataset/{configuration}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("convert_dataset")
    resources:
        **resources_of("convert_dataset"),
    params:
        nnunet_root=NNUNET_ROOT,
        settings=lambda w: settings_json("convert-dataset", [w.configuration]),
        boxes=lambda w, input: flag_args("--crop-boxes", input.boxes),
    shell:
        "python -m workflow_scripts convert-dataset --nnunet-root {params.nnunet_root:q} --images {input.images:q} "
        "--references {input.references:q} {params.boxes:q} "
        "--settings {params.settings:q} --out {output:q} > {log:q} 2>&1"


rule plan_and_preprocess:
    input:
        dataset="results/datasets/{configuration}/dataset_summary.json",
        splits="results/splits/splits_final.json",
    output:
        "results/datasets/{configuration}/plans_summary.json",
    log:
        "logs/plan_and_preprocess/{configuration}.log",
    benchmark:
        "results/benchmarks/plan_and_preprocess/{configuration}.tsv"
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("plan_and_preprocess")
    resources:
        **resources_of("plan_and_preprocess"),
    params:
        nnunet_root=NNUNET_ROOT,
        settings=lambda w: settings_json("plan-and-preprocess", [w.configuration]),
    shell:
        "python -m workflow_scripts plan-and-preprocess --nnunet-root {params.nnunet_root:q} --threads {threads} "
        "--settings {params.settings:q} --splits {input.splits:q} --out {output:q} > {log:q} 2>&1"
