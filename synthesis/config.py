"""Settings of the synthetic dataset generator that do not depend on the family."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SynthConfig:
    """Settings of the generator (lengths in mm).

    ``initial_tre_mm``, ``resected_fraction`` and ``corridor_probability`` serve the
    ``legacy`` family only; the other families take theirs from :mod:`synthesis.families`.
    """

    grid: int = 256  # voxels per side
    fov_mm: float = 128.0  # side of the cube (ReMIND2Reg: 256 x 0.5 mm)
    n_landmarks: int = 15
    min_landmark_separation_mm: float = 8.0
    initial_tre_mm: tuple[float, float] = (3.5, 5.0)  # legacy: drawn target of the mean initial TRE
    coarse_mm: float = 2.0  # spacing on which the velocity field is integrated
    t2_probability: float = 1.0  # chance that a case has a T2 (ReMIND2Reg: 62 of 99)
    resected_fraction: tuple[float, float] = (0.6, 1.0)  # legacy
    corridor_probability: float = 0.7  # legacy: chance of a saline-filled access corridor
    tumour_radius_mm: tuple[float, float] = (7.0, 12.0)  # MNI source only
    tumour_depth_mm: tuple[float, float] = (10.0, 22.0)  # MNI source only, below the surface

    def __post_init__(self) -> None:
        if self.grid < 16 or self.fov_mm <= 0 or self.n_landmarks < 1 or self.coarse_mm <= 0:
            raise ValueError(
                f"invalid SynthConfig: grid {self.grid}, fov {self.fov_mm}, coarse {self.coarse_mm}"
            )
        if not 0.0 <= self.t2_probability <= 1.0 or not 0.0 <= self.corridor_probability <= 1.0:
            raise ValueError("SynthConfig probabilities must lie in [0, 1]")
        for name in ("initial_tre_mm", "resected_fraction", "tumour_radius_mm", "tumour_depth_mm"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"SynthConfig.{name} must be an increasing non-negative range")

    @property
    def spacing_mm(self) -> float:
        return self.fov_mm / self.grid


__all__ = ["SynthConfig"]
