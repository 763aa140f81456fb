"""The ultrasound field of view (the "sector") of an image on its own grid."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage


def sector_mask(us: NDArray) -> NDArray[np.bool_]:
    """The US field of view: non-zero voxels, closed and hole-filled (speckle has zeros).

    ``us`` is a 3D array; the result has its shape. The image is padded by 2 voxels before
    the closing, which would otherwise treat the outside as background and erode a sector
    that touches the volume border.
    """
    mask = np.asarray(us) > 0
    if not mask.any():
        return mask
    closed = ndimage.binary_closing(np.pad(mask, 2), iterations=2)[2:-2, 2:-2, 2:-2]
    return ndimage.binary_fill_holes(closed)
