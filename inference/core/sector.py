"""The ultrasound field of view (the "sector") of an image on its own grid.

The US is constant outside its sector: usually 0, but some exports write another value (1,
for instance). The background is the value that most voxels on the volume's six faces take,
when it covers at least a third of them, else the most common value of the whole volume when
it covers at least a fifth of it; without such a value the US fills its grid and every voxel is
in the field of view.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

BORDER_SHARE = 1 / 3  # the border's most common value is the background when it covers this much
VOLUME_SHARE = 1 / 5  # ... else the volume's most common value, when it covers this much


def _mode(values: NDArray) -> tuple[float, float]:
    """(most common value, its share of ``values``)."""
    uniques, counts = np.unique(values, return_counts=True)
    top = int(np.argmax(counts))
    return float(uniques[top]), counts[top] / values.size


def background_value(us: NDArray) -> float | None:
    """The constant value of the US outside its sector, or None when there is none."""
    a = np.asarray(us)
    faces = [a[0], a[-1], a[:, 0], a[:, -1], a[:, :, 0], a[:, :, -1]]
    value, share = _mode(np.concatenate([f.ravel() for f in faces]))
    if share >= BORDER_SHARE:
        return value
    step = max(1, a.size // 2_000_000)  # a sample is enough to find a value covering 20 %
    value, share = _mode(a.ravel()[::step])
    return value if share >= VOLUME_SHARE else None


def sector_mask(us: NDArray) -> NDArray[np.bool_]:
    """The US field of view: voxels that differ from the background (:func:`background_value`),
    closed and hole-filled (speckle has background-valued voxels too).

    ``us`` is a 3D array; the result has its shape. The mask is padded by 2 voxels before the
    closing, which would otherwise treat the outside as background and erode a sector that
    touches the volume border. Without a background the whole grid is the field of view.
    """
    a = np.asarray(us)
    background = background_value(a)
    if background is None:
        return np.ones(a.shape, dtype=bool)
    mask = a != background
    if not mask.any():
        return mask
    # Close and fill on the mask's bounding box only (a sector fills a few % of a ReMIND2Reg
    # grid): the same result as on the whole grid, since a closing by 2 iterations stays
    # inside the bounding box and everything outside it is background connected to the
    # grid's border.
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask))
    closed = ndimage.binary_closing(np.pad(mask[box], 2), iterations=2)[2:-2, 2:-2, 2:-2]
    out = np.zeros(a.shape, dtype=bool)
    out[box] = ndimage.binary_fill_holes(closed)
    return out
