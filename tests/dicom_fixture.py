"""DICOM CT series for the DICOM tests: the toy data's writer, and a small phantom with distinct values."""
from __future__ import annotations

import numpy as np

from workflow_scripts.toy_data import SYNTHETIC_PATIENT_TAGS, write_series  # noqa: F401


def phantom_hu(shape=(12, 40, 48), seed: int = 0) -> np.ndarray:
    """Air around a soft-tissue body with a bright blob: distinct values along every axis."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    hu = np.full(shape, -1000, dtype=np.int16)
    body = ((y - shape[1] / 2) / (shape[1] * 0.4)) ** 2 + ((x - shape[2] / 2) / (shape[2] * 0.45)) ** 2 < 1
    hu[body] = 40
    hu[(z > 3) & (z < 8) & (np.abs(y - 12) < 4) & (np.abs(x - 30) < 5)] = 700
    return (hu + rng.integers(-20, 20, shape)).astype(np.int16)
