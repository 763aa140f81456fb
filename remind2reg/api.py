"""The Python API: register images in memory and score a field on landmarks.

Example::

    import nibabel as nib
    import remind2reg

    us = nib.load("ReMIND2Reg_0001_0000.nii.gz")
    t1 = nib.load("ReMIND2Reg_0001_0001.nii.gz")
    t2 = nib.load("ReMIND2Reg_0001_0002.nii.gz")
    result = remind2reg.register(us, {"ceT1": t1, "T2": t2})
    field = result.fields["ceT1"]  # (I, J, K, 3), fixed voxels, warped = moving(x + u(x))
    nib.save(result.to_nifti("ceT1"), "disp_0001_0000_0001_0001.nii.gz")
    metrics = remind2reg.evaluate(field, fixed_landmarks, moving_landmarks, t1)

Images may be nibabel images, SimpleITK images or file paths; each is converted once, at
this boundary (:mod:`remind2reg.inference.io.convert`). The command line (``remind2reg
register``) runs the same engine, so the same inputs and seed give bit-identical fields on the
CPU. On a CUDA device they agree to a fraction of a millimetre, not bit for bit (the gradients
of grid sampling are summed with atomics; ``tests/test_gpu_agreement.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from remind2reg.inference.config import RegistrationConfig
from remind2reg.inference.io.dataset import MOVING_MODALITIES

SEQUENCE_ALIASES = {"ceT1": "0001", "T1": "0001", "t1c": "0001", "T2": "0002", "t2w": "0002"}


@dataclass(frozen=True)
class RegistrationResult:
    """The fields of one registration, by the sequence names the caller used.

    ``fields[name]``: challenge-format displacement ``(I, J, K, 3)`` in voxels of the fixed grid
    along its array axes, fixed -> moving (``warped(x) = moving(x + u(x))``), float32.
    ``fixed_vox2world``: the fixed grid's voxel-to-world matrix (RAS+ mm), the header to write
    the fields with. ``stages``: seconds per stage; ``notes``: what the stages reported
    (global matrices, guard NMI, fallbacks); ``device``: where it ran.
    """

    fields: dict[str, NDArray[np.float32]]
    fixed_vox2world: NDArray[np.float64]
    stages: dict[str, float] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)
    device: str = "cpu"

    def to_nifti(self, sequence: str):
        """The field of ``sequence`` as a nibabel image with the fixed grid's header."""
        import nibabel as nib

        img = nib.Nifti1Image(self.fields[sequence], self.fixed_vox2world)
        img.set_sform(self.fixed_vox2world, code=1)
        img.set_qform(self.fixed_vox2world, code=1)
        return img


def _modality(name: str) -> str:
    """The file suffix (``0001`` ceT1, ``0002`` T2) of a sequence name."""
    modality = SEQUENCE_ALIASES.get(name, name)
    if modality not in MOVING_MODALITIES:
        raise ValueError(
            f"unknown MR sequence {name!r}: use one of {', '.join(SEQUENCE_ALIASES)} or {', '.join(MOVING_MODALITIES)}"
        )
    return modality


def register(
    fixed: Any,
    moving: Any,
    *,
    config: RegistrationConfig | None = None,
    device: str = "auto",
    method: str = "convex-adam",
    seed: int = 0,
    init_fixed2moving: Any = None,
) -> RegistrationResult:
    """Register one or two pre-operative MR sequences to one intra-operative ultrasound.

    ``fixed``: the US. ``moving``: one MR image (taken as ceT1), or a mapping from sequence
    name (``"ceT1"``/``"0001"``, ``"T2"``/``"0002"``) to image; with two, they are combined as
    ``config.fusion`` says. A moving image on another grid is resampled onto the fixed grid
    (world coordinates) first. Raises :class:`~remind2reg.inference.errors.InputError` for an
    unusable image (constant, no US sector, NaN, singular header).

    ``init_fixed2moving``: a transform to start from instead of the global stage, for every
    sequence: a 4x4 matrix in world mm (RAS+, ``moving_world = M @ fixed_world``) or a file
    that :func:`~remind2reg.inference.io.transform_files.read_fixed2moving` reads (a
    ``reg_aladin -aff`` ``.txt`` matrix, or an ITK/ANTs transform). It needs
    ``method="convex-adam"`` with a config whose ``[affine] method`` is ``"none"``, or a
    ``niftyreg-*`` method (``reg_aladin -inaff``); otherwise
    :class:`~remind2reg.inference.errors.UsageError`.
    """
    from remind2reg.inference.batch import Engine, check_init_method
    from remind2reg.inference.device import resolve_device
    from remind2reg.inference.io.cases import checked_fixed, on_fixed_grid
    from remind2reg.inference.io.convert import as_image

    named = dict(moving) if isinstance(moving, Mapping) else {"ceT1": moving}
    if not named:
        raise ValueError("no moving image given")
    by_modality = {_modality(name): name for name in named}
    if len(by_modality) != len(named):
        raise ValueError(f"two moving images for one sequence: {sorted(named)}")
    us = checked_fixed(as_image(fixed, "fixed image"))
    images = {
        mod: on_fixed_grid(as_image(named[name], f"moving image {name!r}"), us, name=name)
        for mod, name in sorted(by_modality.items())  # ceT1 before T2, as in a ReMIND2Reg folder
    }
    init = None
    if init_fixed2moving is not None:
        check_init_method(method, config)
        init = _fixed2moving(init_fixed2moving)
    engine = Engine(method, config or RegistrationConfig(), resolve_device(device), seed)
    result, ran_on = engine(us, images, "api", init)
    fields = {by_modality[mod]: f for mod, f in result.fields.items()}
    return RegistrationResult(fields, us.vox2world, result.stages, result.notes, ran_on)


def _fixed2moving(init: Any) -> NDArray[np.float64]:
    """A 4x4 ``fixed2moving_world`` from a matrix or a transform file, checked (finite, affine,
    invertible) whatever method it goes to: ``reg_aladin`` would take a bad one silently."""
    from pathlib import Path

    from remind2reg.inference.io.transform_files import read_fixed2moving
    from remind2reg.inference.stages.global_alignment import checked_fixed2moving

    if isinstance(init, str | Path):
        return read_fixed2moving(init)
    return checked_fixed2moving(init)


@dataclass(frozen=True)
class PairMetrics:
    """The challenge's metrics of one field: TRE per landmark and its mean (mm), the initial
    TRE (zero field), SDlogJ (official ``+3`` definition) and the folding percentage."""

    tre_landmarks: NDArray[np.float64]
    tre: float
    tre_initial: float
    sdlogj: float
    folding_percent: float


def evaluate(
    field: Any, fixed_landmarks: Any, moving_landmarks: Any, moving_spacing: Any = (0.5, 0.5, 0.5)
) -> PairMetrics:
    """Score a displacement field exactly as the challenge does.

    ``field``: ``(I, J, K, 3)`` array (or nibabel image) in fixed voxels, fixed -> moving;
    landmarks: ``(N, 3)`` voxel indices of the fixed and of the moving image (rows correspond);
    ``moving_spacing``: the moving image's voxel size in mm, or the moving image itself (its
    header's ``pixdim``, as the challenge reads it).
    """
    from remind2reg.evaluation.metrics import (
        folding_percent,
        jacobian_determinant,
        sdlogj,
        target_registration_error,
    )

    disp = np.asarray(field.dataobj if hasattr(field, "dataobj") else field, dtype=np.float64)
    if disp.ndim != 4 or disp.shape[-1] != 3:
        raise ValueError(f"the field must be (I, J, K, 3), got shape {disp.shape}")
    if hasattr(moving_spacing, "header"):
        moving_spacing = moving_spacing.header.get_zooms()[:3]
    fix = np.asarray(fixed_landmarks, dtype=np.float64)
    mov = np.asarray(moving_landmarks, dtype=np.float64)
    spacing = np.asarray(moving_spacing, dtype=np.float64)
    tre = target_registration_error(fix, mov, disp, spacing)
    jac = jacobian_determinant(disp)
    tre0 = np.linalg.norm((fix - mov) * spacing, axis=1)
    return PairMetrics(tre, float(tre.mean()), float(tre0.mean()), sdlogj(jac), folding_percent(jac))
