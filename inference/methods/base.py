"""What a registration method is: images in, one displacement field per moving image out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from remind2reg.inference.io.nifti import Image


@dataclass
class MethodResult:
    """Challenge-format fields ``(I, J, K, 3)`` by moving modality, and seconds per stage."""

    fields: dict[str, NDArray[np.float32]]
    stages: dict[str, float] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)


class Method(Protocol):
    """Registers the moving images of one case (e.g. {"0001": ceT1, "0002": T2}) to the US."""

    name: str

    def __call__(self, fixed: Image, moving: dict[str, Image]) -> MethodResult: ...
