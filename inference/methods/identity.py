"""The identity method: a zero displacement field (the initial alignment)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from remind2reg.inference.io.displacement import SharedField
from remind2reg.inference.io.nifti import Image
from remind2reg.inference.methods.base import MethodResult, refuse_init


class IdentityMethod:
    """``u(x) = 0`` on the fixed grid, shape ``(I, J, K, 3)``: ``warped = moving(x)``."""

    name = "identity"

    def __call__(
        self, fixed: Image, moving: dict[str, Image], init_fixed2moving: NDArray[np.float64] | None = None
    ) -> MethodResult:
        refuse_init(self.name, init_fixed2moving)
        zero = np.zeros((*fixed.shape, 3), dtype=np.float32)
        return MethodResult((SharedField(tuple(moving), zero),))
