"""Logic of the nnU-Net CT lesion segmentation workflow: one module per stage.

Rules in ``rules/`` call these functions through ``python -m workflow_scripts <verb>``; tests call them directly.
"""
