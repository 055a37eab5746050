# Image folders that hold DICOM series: each series converted to NIfTI (its QC findings kept), each NIfTI case
# linked, so every later rule reads one folder of <case>.nii.gz per split. Without DICOM cases nothing runs here.


rule convert_dicom:
    input:
        lambda w: DICOM_CASES[w.case],
    output:
        image="results/inputs/{input_folder}/{case}.nii.gz",
        findings="results/qc/dicom/{input_folder}/{case}.json",
    log:
        "logs/convert_dicom/{input_folder}/{case}.log",
    benchmark:
        "results/benchmarks/convert_dicom/{input_folder}/{case}.tsv"
    wildcard_constraints:
        case=_alternatives(DICOM_CASES) or "^$",
        input_folder="train|test",
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("convert_dicom")
    resources:
        **resources_of("convert_dicom"),
    params:
        settings=settings_json("convert-dicom"),
    shell:
        "python -m workflow_scripts convert-dicom --case {wildcards.case:q} --folder {input:q} "
        "--settings {params.settings:q} --out {output.image:q} --findings {output.findings:q} > {log:q} 2>&1 || (cat {log:q} >&2; exit 1)"


rule link_image:
    input:
        lambda w: f"{_configured_images_dir(case_split(w.case))}/{w.case}{CHANNEL_SUFFIX}.nii.gz",
    output:
        "results/inputs/{input_folder}/{case}.nii.gz",
    log:
        "logs/link_image/{input_folder}/{case}.log",
    wildcard_constraints:
        case=_alternatives([c for c in TRAIN_CASES + TEST_CASES if c not in DICOM_CASES]) or "^$",
        input_folder="train|test",
    conda:
        "../envs/workflow.yaml"
    shell:
        'ln -sfn "$(realpath {input:q})" {output:q} > {log:q} 2>&1'
