# DICOM results of new cases that came as DICOM series (workflow_scripts/dicom_results.py): those the config's
# dicom_results section asks for, in one job per case. New cases given as NIfTI get none; the run says so once at
# its start.


if DICOM_RESULTS:

    rule dicom_results:
        input:
            source=lambda w: DICOM_CASES[w.case],
            labels=prediction("test", "refined", "{case}"),
            lesions="results/burden/test/lesions.tsv",
        output:
            [dicom_result("{case}", name) for name in DICOM_RESULTS],
        log:
            "logs/dicom_results/{case}.log",
        benchmark:
            "results/benchmarks/dicom_results/{case}.tsv"
        wildcard_constraints:
            case=_alternatives(DICOM_TEST_CASES) or "^$",
        conda:
            "../envs/workflow.yaml"
        threads: threads_of("dicom_results")
        resources:
            **resources_of("dicom_results"),
        params:
            settings=settings_json("dicom-results"),
        shell:
            "python -m workflow_scripts dicom-results --case {wildcards.case:q} --source {input.source:q} "
            "--labels {input.labels:q} --lesions {input.lesions:q} --settings {params.settings:q} --out {output:q} "
            "> {log:q} 2>&1 || (cat {log:q} >&2; exit 1)"
