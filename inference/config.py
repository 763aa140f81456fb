"""Typed settings of the registration pipeline, loadable from a TOML or JSON file.

Every tunable number of the pipeline lives here (not in code). A config file may give any
subset; unknown keys are an error. Example (TOML)::

    working_spacing_mm = 1.0
    fusion = "joint"
    [mind]
    radius = 1
    dilation = 2
    [[convex.levels]]
    grid_sp = 3
    disp_hw = 6
    weight = 0.4
    [adam]
    iterations = 60
    [affine]
    method = "blockmatch"
    transform = "rigid"

Grid spacings and search ranges are in voxels of the WORKING grid (``working_spacing_mm``).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_type_hints

from remind2reg.inference.affine.blockmatch import TRANSFORMS, BlockMatchSettings
from remind2reg.inference.deformable.instance import AdamSettings
from remind2reg.inference.errors import InputError
from remind2reg.inference.refinement.stage import RefineSettings

FUSIONS = ("none", "joint", "mean", "max")
AFFINE_METHODS = ("none", "blockmatch", "niftyreg")
COMBINES = ("last", "weighted")


@dataclass(frozen=True)
class MindSettings:
    radius: int = 1  # box half-size (working voxels)
    dilation: int = 2  # neighbour distance (working voxels)
    use_sector_mask: bool = True  # masked MIND on the US: the sector border adds no structure


@dataclass(frozen=True)
class LevelSettings:
    grid_sp: int  # working voxels per coarse cell
    disp_hw: int  # search half-width, coarse voxels: +- grid_sp * disp_hw working voxels
    weight: float = 1.0  # weight in MCBO-style fusion (combine = "weighted")


@dataclass(frozen=True)
class ConvexSettings:
    # One coarse level (4 mm cells, +-16 mm) measured best on the tuning cases; finer cascaded
    # levels (MCBO's 6/4/2 in 0.5 mm voxels = 3/2/1 mm) fitted speckle (README, benchmarks).
    levels: tuple[LevelSettings, ...] = (LevelSettings(grid_sp=4, disp_hw=4, weight=1.0),)
    coefficients: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
    average_iterates: bool = True  # MCBO's weight balancing
    combine: str = "last"  # "last": coarse-to-fine cascade; "weighted": MCBO weighted fusion
    inverse_consistent: bool = False  # also solve moving->fixed, then symmetrise both fields
    inverse_iterations: int = 10


@dataclass(frozen=True)
class AffineStageSettings:
    """The global stage before the deformable one (``method = "none"``: the header alignment).

    ``blockmatch``: MIND-SSC block matching + LTS (:mod:`inference.affine.blockmatch`);
    ``niftyreg``: ``reg_aladin`` with the organisers' settings (:mod:`inference.affine.niftyreg`).
    One transform is shared by ceT1 and T2 unless ``fusion = "none"``: block matching then
    matches their features jointly, and ``reg_aladin`` registers the first moving sequence.
    """

    method: str = "none"
    transform: str = "rigid"  # rigid | affine
    blockmatch: BlockMatchSettings = field(default_factory=BlockMatchSettings)

    def __post_init__(self) -> None:
        if self.method not in AFFINE_METHODS:
            raise ValueError(f"affine.method must be one of {AFFINE_METHODS}, got {self.method!r}")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"affine.transform must be one of {TRANSFORMS}, got {self.transform!r}")


@dataclass(frozen=True)
class RegistrationConfig:
    working_spacing_mm: float = 1.0  # images are averaged down to this spacing
    crop_margin_mm: float = 12.0  # margin around the US sector's bounding box
    fusion: str = "joint"  # ceT1 + T2: none | joint (one cost over both) | mean | max (MCBO)
    guard: bool = True  # keep the input alignment when the result does not raise the NMI
    deformable: bool = True  # False: the affine stage alone (e.g. --method blockmatch-rigid)
    affine: AffineStageSettings = field(default_factory=AffineStageSettings)
    refine: RefineSettings = field(default_factory=RefineSettings)  # learned refinement (off by default)
    mind: MindSettings = field(default_factory=MindSettings)
    convex: ConvexSettings = field(default_factory=ConvexSettings)
    adam: AdamSettings = field(default_factory=AdamSettings)

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.convex.combine not in COMBINES:
            raise ValueError(f"convex.combine must be one of {COMBINES}, got {self.convex.combine!r}")
        if not self.convex.levels:
            raise ValueError("convex.levels must not be empty")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegistrationConfig:
        return _build(cls, data, "config")

    @classmethod
    def from_file(cls, path: str | Path) -> RegistrationConfig:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the config ({exc})", path=path) from exc
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise InputError(f"invalid config: {exc}", path=path) from exc


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Recursively build a (frozen) dataclass from plain dicts/lists, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise TypeError(f"{where}: expected a table, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        items = get_args(hint)
        if is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{where}.{key}")
        elif items and is_dataclass(items[0]):  # tuple[SomeSettings, ...]
            kwargs[key] = tuple(_build(items[0], v, f"{where}.{key}[{i}]") for i, v in enumerate(value))
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)
