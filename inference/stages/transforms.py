"""The transform of a group of moving sequences, as it passes from stage to stage.

A *group* is the moving sequences (``"0001"`` ceT1, ``"0002"`` T2) that share one transform:
both of them when they are fused (``fusion`` joint, mean, max or primary), else one group per
sequence. This explicit sharing replaces any bookkeeping of which tensors are the same object.

Direction (working voxels, fixed -> moving): fixed working voxel ``x`` is matched with the
moving point ``A (x + d(x))``, where ``A`` is the global stage's map (``vox2vox``, identity
when there is none) and ``d`` the deformable field registered on the MR pre-warped by ``A``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from remind2reg.inference.core.fields import affine_after_field


def sequence_groups(modalities: tuple[str, ...], fusion: str) -> tuple[tuple[str, ...], ...]:
    """The groups of ``modalities`` that share one transform under ``fusion``."""
    if fusion != "none" and len(modalities) > 1:
        return (tuple(modalities),)
    return tuple((m,) for m in modalities)


def primary_sequence(modalities: tuple[str, ...]) -> str:
    """The sequence that stands for a group where one must: the one the global search and
    ``reg_aladin`` register, the learned refinement refines and ``fusion = "primary"``
    estimates from. The lowest channel: ``"0001"`` (ceT1) when present, else ``"0002"`` (T2),
    whatever order the group lists them in."""
    if not modalities:
        raise ValueError("primary_sequence: a group without sequences")
    return min(modalities)


@dataclass(frozen=True)
class Alignment:
    """The global stage's result for one group.

    ``fixed2moving_world`` maps fixed world mm to moving world mm
    (``moving_world = fixed2moving_world @ fixed_world``); ``vox2vox`` is the same map in
    working voxels, ``inv(W) @ fixed2moving_world @ W`` with ``W = working_vox2world``.
    Both are None for the header alignment (no global stage, or the guard dropped it).
    """

    modalities: tuple[str, ...]
    fixed2moving_world: NDArray[np.float64] | None = None
    vox2vox: NDArray[np.float64] | None = None


@dataclass(frozen=True)
class GroupTransform:
    """An :class:`Alignment` and the deformable field ``d`` ``(1, 3, I, J, K)`` (working voxels) after it."""

    alignment: Alignment
    disp: torch.Tensor

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.alignment.modalities

    def total_field(self) -> torch.Tensor:
        """The whole map as one working-grid field: ``x + u(x) = A (x + d(x))``."""
        if self.alignment.vox2vox is None:
            return self.disp
        return affine_after_field(self.alignment.vox2vox, self.disp)

    def identity(self) -> GroupTransform:
        """The input alignment: no global transform and a zero field."""
        return GroupTransform(Alignment(self.modalities), torch.zeros_like(self.disp))
