"""The identity method: a zero displacement field (the initial alignment)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from inference.io.nifti import Image


def identity_displacement(fixed: Image, moving: Image) -> NDArray[np.float32]:
    """``u(x) = 0`` on the fixed grid, shape ``(I, J, K, 3)``: ``warped = moving(x)``."""
    del moving  # the identity ignores the images by definition
    return np.zeros((*fixed.shape, 3), dtype=np.float32)
