"""Packing a leaderboard submission: every expected field, checked, in one zip archive.

The Learn2Reg / grand-challenge validation leaderboard takes a zip of the
``disp_<case>_0000_<case>_<mod>.nii.gz`` files at the archive's top level. Before writing it,
every expected file (one per pair of the input folder) is checked: it exists, its shape is
the fixed image's plus 3, its data type is floating point and its values are finite. Any
problem refuses the whole archive, and the message lists them all.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np

from remind2reg.inference.errors import InputError
from remind2reg.inference.io.atomic import atomic_path
from remind2reg.inference.io.dataset import find_pairs
from remind2reg.inference.io.nifti import read_header

log = logging.getLogger(__name__)


def check_prediction(path: Path, fixed_shape: tuple[int, ...]) -> str | None:
    """A problem with one predicted field, or None if it is fine."""
    if not path.is_file():
        return f"{path.name}: missing"
    try:
        img = nib.load(str(path))
        expected = (*tuple(fixed_shape[:3]), 3)
        if tuple(img.shape) != expected:
            return f"{path.name}: shape {tuple(img.shape)}, expected {expected}"
        if np.dtype(img.get_data_dtype()).kind != "f":
            return f"{path.name}: data type {img.get_data_dtype()}, expected floating point"
        data = np.asarray(img.dataobj)
    except Exception as exc:  # a corrupt file: report it with the others
        return f"{path.name}: unreadable ({exc})"
    if not np.isfinite(data).all():
        return f"{path.name}: {int((~np.isfinite(data)).sum())} values are NaN or Inf"
    return None


def pack_submission(
    input_dir: str | Path,
    pred_dir: str | Path,
    out: str | Path,
    modalities: tuple[str, ...] = ("0001", "0002"),
) -> Path:
    """Check every expected field of ``input_dir``'s pairs in ``pred_dir`` and zip them to ``out``."""
    pred_dir, out = Path(pred_dir), Path(out)
    pairs = find_pairs(input_dir, modalities)
    problems, files = [], []
    for pair in pairs:
        shape, _ = read_header(pair.fixed, pair.case)
        path = pred_dir / pair.output_name
        problem = check_prediction(path, shape)
        if problem:
            problems.append(problem)
        files.append(path)
    if problems:
        raise InputError(
            f"not packing: {len(problems)} of {len(pairs)} fields have problems: " + "; ".join(problems),
            path=pred_dir,
        )
    with atomic_path(out) as tmp:
        # The fields are gzip-compressed already: store them as they are.
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for path in files:
                archive.write(path, arcname=path.name)
    log.info("Packed %d fields into %s", len(files), out)
    return out
