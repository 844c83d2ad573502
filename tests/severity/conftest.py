"""Fixtures of the severity-index tests: a normal-face generator that can draw demo faces, and
demo faces with and without a notch (the same face drawn at several severities)."""

from __future__ import annotations

import numpy as np
import pytest
from linear_faces import FACES, RES, LinearFaces, aligned_face, normal_faces


@pytest.fixture(scope="session")
def normal_g() -> LinearFaces:
    """Mean and 24 principal components of 200 demo faces without a notch, at 128 px."""
    return LinearFaces(normal_faces(200, RES), components=24)


@pytest.fixture(scope="session")
def cleft_faces() -> dict[float, np.ndarray]:
    """severity -> uint8 [FACES, H, W, 3]: faces not among the generator's, each drawn at every severity."""
    return {sev: np.stack([aligned_face(7, i, RES, sev) for i in range(FACES)]) for sev in (0.0, 0.5, 1.0)}
