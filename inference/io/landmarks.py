"""Landmark files: the challenge's CSV (voxel indices) and MNI ``.tag`` files (world mm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from remind2reg.inference.errors import InputError
from remind2reg.inference.io.atomic import write_text_atomic


def read_landmarks_csv(path: str | Path, case: str | None = None) -> NDArray[np.float64]:
    """Read a challenge landmark file: no header, one ``x,y,z`` row of VOXEL indices per point.

    Returns an ``(N, 3)`` float64 array (read as the official evaluator does, ``np.loadtxt``).
    """
    path = Path(path)
    try:
        points = np.loadtxt(path, delimiter=",", ndmin=2)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read landmarks ({exc})", path=path, case=case) from exc
    if points.shape[1] != 3 or len(points) == 0:
        raise InputError(f"expected N rows of x,y,z, found shape {points.shape}", path=path, case=case)
    if not np.isfinite(points).all():
        raise InputError("landmarks contain NaN or Inf", path=path, case=case)
    return points


def write_landmarks_csv(path: str | Path, points: NDArray) -> None:
    """Write ``(N, 3)`` voxel coordinates in the challenge's CSV format (atomically)."""
    rows = [",".join(f"{v:.6f}" for v in p) for p in np.asarray(points, dtype=np.float64)]
    write_text_atomic(path, "\n".join(rows) + "\n")


def read_tag_file(path: str | Path) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Read an MNI ``.tag`` file with two volumes.

    Returns ``(points_volume1, points_volume2)``, each ``(N, 3)`` in world mm. In the RESECT
    files volume 1 is the MRI and volume 2 the ultrasound.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    if "Points" not in text:
        raise InputError("not an MNI tag file (no 'Points =' section)", path=path)
    body = text.split("Points", 1)[1].split("=", 1)[1]
    rows = []
    for line in body.replace(";", "\n").splitlines():
        fields = line.replace('"', " ").split()
        numbers = []
        for f in fields:
            try:
                numbers.append(float(f))
            except ValueError:
                break
        if len(numbers) >= 6:
            rows.append(numbers[:6])
    if not rows:
        raise InputError("no tag points found", path=path)
    arr = np.asarray(rows, dtype=np.float64)
    return arr[:, :3], arr[:, 3:6]
