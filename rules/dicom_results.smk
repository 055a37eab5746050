# DICOM results of new cases that came as DICOM series: a Segmentation of the refined label map on the source
# series (workflow_scripts/dicom_results.py). New cases given as NIfTI get none; the run says so once at its start.


rule dicom_seg:
    input:
        source=lambda w: DICOM_CASES[w.case],
        labels=prediction("test", "refined", "{case}"),
    output:
        "results/dicom/test/{case}/segmentation.dcm",
    log:
        "logs/dicom_seg/{case}.log",
    benchmark:
        "results/benchmarks/dicom_seg/{case}.tsv"
    wildcard_constraints:
        case=_alternatives(DICOM_TEST_CASES) or "^$",
    conda:
        "../envs/workflow.yaml"
    threads: threads_of("dicom_seg")
    resources:
        **resources_of("dicom_seg"),
    params:
        settings=settings_json("dicom-seg"),
    shell:
        "python -m workflow_scripts dicom-seg --case {wildcards.case:q} --source {input.source:q} "
        "--labels {input.labels:q} --settings {params.settings:q} --out {output:q} > {log:q} 2>&1 "
        "|| (cat {log:q} >&2; exit 1)"
