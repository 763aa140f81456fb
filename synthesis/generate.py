"""Synthetic ReMIND2Reg-format datasets with known ground truth (``remind2reg synth``).

A case belongs to a family (:mod:`synthesis.families`) that decides its sector, its
deformation, whether it has a resection cavity, and its iUS appearance. One case is made in
these steps:

1-4. :mod:`synthesis.scene`: the pre-operative brain (MNI152 with an inserted tumour, or a real
   MRI), the probe plan, a 256^3, 0.5 mm oblique grid centred on the drawn sector, the moving
   images on that grid;
5. :func:`deform`: the known fixed -> moving field (:mod:`synthesis.deformation`);
6. :func:`intraoperative_anatomy`: the anatomy warped into the fixed frame, with the resection
   cavity cut out (:mod:`synthesis.cavity`) in the families that have one;
7. :func:`synthesis.ultrasound.render_ultrasound` with the family's per-case settings
   (:mod:`synthesis.appearance`): the iUS (fixed image);
8. :func:`place_landmarks`: corner points in the sector, moved by the ground truth.

Random streams: a case draws from ``default_rng([seed, index])`` in the ``legacy`` family
(the original generator's cases, unchanged) and from ``default_rng([seed, index, code])``
with the family's code otherwise, so that families do not share draws.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from remind2reg.evaluation.metrics import sample_displacement
from remind2reg.inference.core.pointfit import rigid_fit_residual
from remind2reg.inference.errors import InputError
from remind2reg.inference.geometry import apply_affine
from remind2reg.inference.io.atomic import write_text_atomic
from remind2reg.inference.io.landmarks import write_landmarks_csv
from remind2reg.inference.io.nifti import write_image
from remind2reg.synthesis import labels as L
from remind2reg.synthesis.appearance import case_ultrasound_params
from remind2reg.synthesis.brainshift import BrainShiftParams
from remind2reg.synthesis.cavity import CavityFrame, irregular_cavity, legacy_cavity
from remind2reg.synthesis.config import SynthConfig
from remind2reg.synthesis.deformation import (
    ShiftGrid,
    brain_shift,
    draw_initial_tre,
    draw_post_resection_shift,
    draw_rigid,
    random_perpendicular,
    rigid_dominant_shift,
)
from remind2reg.synthesis.families import DEFAULT_FAMILY, FamilySettings, family_settings
from remind2reg.synthesis.landmarks import pick_landmarks
from remind2reg.synthesis.scene import (
    ProbePlan,
    case_geometry,
    load_template_orientations,
    pick_brain,
    plan_probe,
    random_orientation,
    resample_moving,
)
from remind2reg.synthesis.sources import default_shared_data
from remind2reg.synthesis.ultrasound import Sector, random_sector, render_ultrasound, sector_bbox, sector_mask

log = logging.getLogger(__name__)

TASK = "ReMIND2Reg"
SPLITS = ("tuning", "held-out")


@dataclass
class CaseRecord:
    """Everything known about a synthetic case, written to ``groundtruth/case_<id>.json``."""

    case: str
    source: str
    spacing_mm: float
    vox2world: list[list[float]]
    has_t2: bool
    sector: dict
    brain_shift: dict
    scale: float
    n_landmarks: int
    initial_tre_mean_mm: float
    initial_tre_max_mm: float
    initial_tre_min_mm: float
    rigid_residual_mm: float  # mean landmark error left after the best rigid fit
    family: str = DEFAULT_FAMILY
    split: str | None = None  # "tuning" or "held-out" in the standard set
    extras: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CaseSpec:
    """What to make: case id (4 digits), ``index`` (seeds the case), MRI source (``mni`` or
    ``shared``) and family. ``subject``: the shared subject (default: by index);
    ``has_t2`` / ``nearly_aligned``: forced, or None to draw them (``SynthConfig.t2_probability``;
    the family's nearly aligned share); ``split``: recorded as is."""

    case: str
    index: int
    source: str = "mni"
    family: str = DEFAULT_FAMILY
    subject: str | None = None
    has_t2: bool | None = None
    nearly_aligned: bool | None = None
    split: str | None = None

    def __post_init__(self) -> None:
        family_settings(self.family)  # raises on an unknown family
        if self.source not in ("mni", "shared") or self.index < 0:
            raise ValueError(f"bad case spec: source {self.source!r}, index {self.index}")
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")


def case_rng(seed: int, index: int, family: FamilySettings) -> np.random.Generator:
    """The random stream of a case (see the module docstring)."""
    key = [seed, index] if family.family_code == 0 else [seed, index, family.family_code]
    return np.random.default_rng(key)


# --------------------------------------------------------------------------------------------
# Sector and grid
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseGeometry:
    """The case grid and the probe sector on it (fixed voxels; ``inner``: the sector eroded by
    3 mm, where landmarks may lie; ``imaged_mid_world``: the middle of the imaged depth)."""

    vox2world: NDArray
    sector: Sector
    mask: NDArray[np.bool_]
    bbox: tuple[slice, ...]
    inner: NDArray[np.bool_]
    imaged_mid_world: NDArray


def place_sector(
    plan: ProbePlan,
    orientation: NDArray,
    config: SynthConfig,
    family: FamilySettings,
    rng: np.random.Generator,
) -> CaseGeometry:
    """Draw the sector (family ranges) along the planned beam and centre the grid on it."""
    spacing, grid = config.spacing_mm, config.grid
    beam_vox = np.linalg.inv(orientation) @ plan.beam_world
    draft = random_sector((0.0, 0.0, 0.0), tuple(beam_vox), rng, family.sector.ranges())
    imaged_mid = plan.surface_world + plan.beam_world * 0.5 * (draft.depth_mm - draft.near_mm)
    vox2world = case_geometry(orientation, spacing, grid, imaged_mid)
    apex_world = plan.surface_world - plan.beam_world * (draft.near_mm - family.sector.probe_indent_mm)
    sector = Sector(
        apex_vox=tuple(apply_affine(np.linalg.inv(vox2world), apex_world[None])[0]),
        axis=tuple(beam_vox / np.linalg.norm(beam_vox)),
        depth_mm=draft.depth_mm,
        opening_deg=draft.opening_deg,
        near_mm=draft.near_mm,
        roll_deg=draft.roll_deg,
    )
    shape = (grid, grid, grid)
    mask = sector_mask(shape, spacing, sector)
    bbox = sector_bbox(shape, spacing, sector)
    inner = np.zeros_like(mask)
    inner[bbox] = ndimage.binary_erosion(mask[bbox], iterations=max(1, round(3.0 / spacing)))
    return CaseGeometry(vox2world, sector, mask, bbox, inner, imaged_mid)


# --------------------------------------------------------------------------------------------
# 5-6: deformation, intra-operative anatomy
# --------------------------------------------------------------------------------------------


def draw_brain_shift(plan: ProbePlan, resected: bool, rng: np.random.Generator) -> BrainShiftParams:
    """Legacy: random component magnitudes (before scaling) of a post-resection shift."""
    gravity = Rotation.from_rotvec(
        np.deg2rad(rng.uniform(0, 20)) * random_perpendicular(plan.beam_world, rng)
    ).apply(plan.beam_world)
    translation = rng.standard_normal(3)
    translation *= rng.uniform(1.5, 4.0) / np.linalg.norm(translation)
    return BrainShiftParams(
        sink_mm=float(rng.uniform(2.5, 5.5)),
        sink_lateral_mm=float(rng.uniform(20.0, 35.0)),
        sink_decay_mm=float(rng.uniform(25.0, 50.0)),
        gravity_world=tuple(gravity),
        cavity_mm=float(rng.uniform(1.0, 2.5)) if resected else 0.0,
        cavity_centre_world=tuple(plan.tumour_world),
        cavity_radius_mm=max(plan.tumour_radius_mm, 5.0),
        residual_mm=float(rng.uniform(0.8, 1.5)),
        residual_smooth_mm=float(rng.uniform(10.0, 16.0)),
        rotation_deg=float(rng.uniform(1.5, 4.0)),
        rotation_axis_world=tuple(random_perpendicular(rng.standard_normal(3), rng)),
        translation_world=tuple(translation),
        pivot_world=tuple(plan.surface_world),
        apex_world=tuple(plan.surface_world),
        beam_world=tuple(plan.beam_world),
    )


def deform(
    spec: CaseSpec,
    family: FamilySettings,
    plan: ProbePlan,
    geo: CaseGeometry,
    config: SynthConfig,
    rng: np.random.Generator,
) -> tuple[NDArray[np.float32], BrainShiftParams, float, dict]:
    """The fixed -> moving field of the case (fixed voxels), its parameters, the overall
    scale and what was drawn (json-able)."""
    where = ShiftGrid(geo.vox2world, config.grid, config.spacing_mm, config.coarse_mm, geo.inner)
    shift = family.shift
    if shift.kind == "legacy":
        target = float(rng.uniform(*config.initial_tre_mm))
        params = draw_brain_shift(plan, resected=True, rng=rng)
        disp, params, scale = brain_shift(params, where, target, rng)
        return disp, params, scale, {"target_initial_tre_mm": target}
    if shift.kind == "post-resection":
        target = draw_initial_tre(shift, rng)
        params = draw_post_resection_shift(
            shift, plan.surface_world, plan.beam_world, plan.tumour_world, plan.tumour_radius_mm, rng
        )
        disp, params, scale = brain_shift(params, where, target, rng)
        return disp, params, scale, {"target_initial_tre_mm": target}
    draw = draw_rigid(shift, rng, spec.nearly_aligned)
    disp, params = rigid_dominant_shift(draw, shift, where, geo.imaged_mid_world, plan.beam_world, rng)
    return disp, params, 1.0, {"rigid_draw": asdict(draw), "nearly_aligned": draw.nearly_aligned}


def warp_anatomy(
    moving: dict[str, NDArray], disp: NDArray, bbox: tuple[slice, ...]
) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """Labels (nearest) and T1 (trilinear) of the moving images at ``x + u(x)`` for the fixed
    voxels ``x`` of ``bbox``: ``fixed(x) = moving(x + u(x))``."""
    origin = np.array([s.start for s in bbox], dtype=np.float64)
    box_shape = tuple(s.stop - s.start for s in bbox)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in box_shape], indexing="ij"), 0)
    coords = grid + origin[:, None, None, None].astype(np.float32) + np.moveaxis(disp[bbox], -1, 0)
    labels = ndimage.map_coordinates(moving["labels"], coords, order=0, mode="constant", cval=0)
    t1 = ndimage.map_coordinates(moving["t1"], coords, order=1, mode="constant", cval=0.0)
    return labels.astype(np.uint8), t1.astype(np.float32)


def intraoperative_anatomy(
    moving: dict[str, NDArray],
    disp: NDArray,
    geo: CaseGeometry,
    plan: ProbePlan,
    family: FamilySettings,
    config: SynthConfig,
    rng: np.random.Generator,
) -> tuple[NDArray[np.uint8], NDArray[np.float32], dict]:
    """Labels and T1 in the fixed frame (inside the sector's bbox; zero elsewhere) with the
    resection cavity (label CAVITY) of families that have one. Returns (labels, t1, drawn)."""
    labels_box, t1_box = warp_anatomy(moving, disp, geo.bbox)
    drawn: dict = {}
    if family.cavity is not None:
        frame = CavityFrame(
            origin=np.array([s.start for s in geo.bbox], dtype=np.float64),
            vox2world=geo.vox2world,
            spacing_mm=config.spacing_mm,
            surface_world=plan.surface_world,
            beam_world=plan.beam_world,
            tumour_world=plan.tumour_world,
        )
        if family.cavity.irregular:
            cavity, draw = irregular_cavity(labels_box, geo.mask[geo.bbox], frame, family.cavity, rng)
            drawn = asdict(draw)
        else:
            fraction = float(rng.uniform(*config.resected_fraction))
            corridor = bool(rng.random() < config.corridor_probability)
            cavity = legacy_cavity(labels_box, frame, fraction, corridor, rng)
            drawn = {"resected_fraction": fraction, "corridor": corridor}
        labels_box[cavity] = L.CAVITY
    shape = disp.shape[:3]
    labels = np.zeros(shape, dtype=np.uint8)
    t1 = np.zeros(shape, dtype=np.float32)
    labels[geo.bbox] = labels_box
    t1[geo.bbox] = t1_box
    return labels, t1, drawn


def place_landmarks(
    labels: NDArray[np.uint8],
    t1: NDArray[np.float32],
    sector: NDArray[np.bool_],
    bbox: tuple[slice, ...],
    spacing_mm: float,
    config: SynthConfig,
    rng: np.random.Generator,
) -> NDArray[np.float64]:
    """Fixed-frame landmark voxels at anatomical corners inside the sector (3 mm from its
    border, 2 mm from the cavity, inside the brain)."""
    lab, sec = labels[bbox], sector[bbox]
    margin = max(1, round(3.0 / spacing_mm))
    allowed = ndimage.binary_erosion(sec, iterations=margin)
    allowed &= ~ndimage.binary_dilation(lab == L.CAVITY, iterations=max(1, round(2.0 / spacing_mm)))
    allowed &= lab != L.BACKGROUND
    image = np.where(lab == L.CAVITY, 0.0, t1[bbox])
    picks = pick_landmarks(
        image, allowed, spacing_mm, config.n_landmarks, rng, config.min_landmark_separation_mm
    )
    return picks + np.array([s.start for s in bbox], dtype=np.float64)


# --------------------------------------------------------------------------------------------
# A whole case, and a dataset
# --------------------------------------------------------------------------------------------


def _listed(d: dict) -> dict:
    """Tuples as lists (json)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _record(spec, brain_name, config, geo, has_t2, params, scale, fix_lms, mov_lms, extras) -> CaseRecord:
    """The case record (initial TRE and rigid residual from the landmarks, in mm)."""
    spacing = config.spacing_mm
    tre0 = np.linalg.norm((mov_lms - fix_lms) * spacing, axis=1)
    fix_mm, mov_mm = apply_affine(geo.vox2world, fix_lms), apply_affine(geo.vox2world, mov_lms)
    return CaseRecord(
        case=spec.case,
        source=brain_name,
        spacing_mm=spacing,
        vox2world=geo.vox2world.tolist(),
        has_t2=has_t2,
        sector=_listed(asdict(geo.sector)),
        brain_shift=_listed(asdict(params)),
        scale=scale,
        n_landmarks=len(fix_lms),
        initial_tre_mean_mm=float(tre0.mean()),
        initial_tre_max_mm=float(tre0.max()),
        initial_tre_min_mm=float(tre0.min()),
        rigid_residual_mm=rigid_fit_residual(fix_mm, mov_mm),
        family=spec.family,
        split=spec.split,
        extras=extras,
    )


def make_case(
    spec: CaseSpec,
    out: Path,
    seed: int,
    config: SynthConfig,
    shared: Path | None,
    orientations: list[NDArray],
) -> CaseRecord:
    """Generate and write one case; returns its record (also written as json)."""
    family = family_settings(spec.family)
    rng = case_rng(seed, spec.index, family)
    brain_config = (
        config
        if family.tumour_radius_mm is None
        else replace(config, tumour_radius_mm=family.tumour_radius_mm)
    )
    brain = pick_brain(spec.source, spec.index, rng, brain_config, shared, spec.subject)
    plan = plan_probe(brain, rng)
    orientation = orientations[spec.index % len(orientations)] if orientations else random_orientation(rng)
    geo = place_sector(plan, orientation, config, family, rng)
    moving = resample_moving(brain, geo.vox2world, config.grid)
    disp, params, scale, extras = deform(spec, family, plan, geo, config, rng)
    fixed_labels, fixed_t1, drawn = intraoperative_anatomy(moving, disp, geo, plan, family, config, rng)
    has_cavity = bool((fixed_labels == L.CAVITY).any())
    us_params, us_drawn = case_ultrasound_params(family, has_cavity, rng)
    us = render_ultrasound(fixed_labels, fixed_t1, config.spacing_mm, geo.sector, rng, us_params)

    fix_lms = place_landmarks(fixed_labels, fixed_t1, geo.mask, geo.bbox, config.spacing_mm, config, rng)
    if len(fix_lms) < config.n_landmarks:
        log.warning("Case %s: only %d landmarks found in the sector", spec.case, len(fix_lms))
    mov_lms = fix_lms + sample_displacement(disp, fix_lms)  # the official cubic sampling
    has_t2 = spec.has_t2 if spec.has_t2 is not None else bool(rng.random() < config.t2_probability)

    _write_case(out, spec.case, geo.vox2world, us, moving, has_t2, fix_lms, mov_lms, disp, fixed_labels)
    extras = {**extras, **drawn, **us_drawn}
    record = _record(spec, brain.name, config, geo, has_t2, params, scale, fix_lms, mov_lms, extras)
    write_text_atomic(out / "groundtruth" / f"case_{spec.case}.json", json.dumps(asdict(record), indent=2))
    return record


def _image_path(out: Path, case: str, modality: str) -> Path:
    return out / "imagesTr" / f"{TASK}_{case}_{modality}.nii.gz"


def _write_case(out, case, vox2world, us, moving, has_t2, fix_lms, mov_lms, disp, fixed_labels) -> None:
    write_image(_image_path(out, case, "0000"), us, vox2world)
    write_image(_image_path(out, case, "0001"), moving["t1"], vox2world)
    mods = ["0001"]
    if has_t2:
        write_image(_image_path(out, case, "0002"), moving["t2"], vox2world)
        mods.append("0002")
    write_landmarks_csv(out / "landmarksTr" / f"{TASK}_{case}_0000.csv", fix_lms)
    gt = out / "groundtruth"
    write_image(gt / f"labels_{case}_0000.nii.gz", fixed_labels, vox2world, dtype=np.uint8)
    write_image(gt / f"labels_{case}_0001.nii.gz", moving["labels"], vox2world, dtype=np.uint8)
    first = gt / f"disp_{case}_0000_{case}_0001.nii.gz"
    write_image(first, disp, vox2world)
    for mod in mods:
        write_landmarks_csv(out / "landmarksTr" / f"{TASK}_{case}_{mod}.csv", mov_lms)
        if mod != "0001":  # the same field serves both MR sequences (one grid): link, don't copy
            _link_or_copy(first, gt / f"disp_{case}_0000_{case}_{mod}.nii.gz")


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_dataset_json(out: Path, cases: list[CaseRecord], config: SynthConfig) -> None:
    """``ReMIND2Reg_dataset.json`` in the Learn2Reg schema; all pairs are in registration_val.

    The description names the families of the cases (their records say which is which)."""
    images, pairs = [], []
    for rec in cases:
        mods = ["0000", "0001"] + (["0002"] if rec.has_t2 else [])
        images += [{"image": f"./imagesTr/{TASK}_{rec.case}_{m}.nii.gz"} for m in mods]
        pairs += [
            {
                "fixed": f"./imagesTr/{TASK}_{rec.case}_0000.nii.gz",
                "moving": f"./imagesTr/{TASK}_{rec.case}_{m}.nii.gz",
            }
            for m in mods[1:]
        ]
    meta = {
        "name": TASK,
        "description": "Synthetic ReMIND2Reg-format data made by `remind2reg synth`, simulator families: "
        + ", ".join(sorted({rec.family for rec in cases})),
        "modality": {"0": "US", "1": "ceT1", "2": "T2"},
        "tensorImageSize": {"0": "3D", "1": "3D", "2": "3D"},
        "tensorImageShape": {"0": [config.grid] * 3},
        "numTraining": len(images),
        "training": images,
        "training_paired_images": [],
        "numRegistration_val": len(pairs),
        "registration_val": pairs,
        "registration_test": [],
    }
    write_text_atomic(out / f"{TASK}_dataset.json", json.dumps(meta, indent=2))


def resolve_shared(shared_data: str | Path | None, source: str) -> Path | None:
    """The shared data folder (``shared_data`` or :func:`default_shared_data`); an InputError
    when ``source`` is "shared" and its ``mri`` folder is missing."""
    shared = Path(shared_data) if shared_data is not None else default_shared_data()
    if source == "shared" and (shared is None or not (shared / "mri").is_dir()):
        raise InputError(
            "--source shared needs the shared MRI folder (set --shared-data or $REMIND2REG_SHARED_DATA)",
            path=(shared / "mri") if shared is not None else None,
        )
    return shared


def generate_cases(
    out: Path, specs: list[CaseSpec], seed: int, config: SynthConfig, shared: Path | None
) -> list[CaseRecord]:
    """Make every case of ``specs`` into ``out`` and write the dataset json; the records."""
    orientations = load_template_orientations(shared)
    log.info(
        "Orientations: %s",
        f"{len(orientations)} real ReMIND2Reg grids"
        if orientations
        else "random oblique (no shared geometry found)",
    )
    records = []
    for spec in tqdm(specs, desc="synth", unit="case"):
        records.append(make_case(spec, out, seed, config, shared, orientations))
        r = records[-1]
        log.info(
            "Case %s (%s, %s): %d landmarks, initial TRE %.2f mm (%.2f-%.2f), after best rigid fit %.2f mm",
            r.case, r.family, r.source, r.n_landmarks, r.initial_tre_mean_mm,
            r.initial_tre_min_mm, r.initial_tre_max_mm, r.rigid_residual_mm,
        )  # fmt: skip
    write_dataset_json(out, records, config)
    return records


def generate_dataset(
    out: str | Path,
    n_cases: int,
    source: str = "mni",
    seed: int = 0,
    config: SynthConfig | None = None,
    shared_data: str | Path | None = None,
    first_case: int = 1,
    family: str | Sequence[str] = DEFAULT_FAMILY,
) -> list[CaseRecord]:
    """Generate ``n_cases`` synthetic cases into ``out``; returns their records.

    ``family``: one of :data:`synthesis.families.FAMILIES`, or several, given to the cases in
    turn (case ``i`` gets ``family[i % len(family)]``). ``shared_data`` default:
    :func:`default_shared_data`.
    """
    config = config or SynthConfig()
    families = [family] if isinstance(family, str) else list(family)
    for name in families:
        family_settings(name)  # fail early on an unknown family
    shared = resolve_shared(shared_data, source)
    specs = [
        CaseSpec(f"{first_case + i:04d}", i, source, families[i % len(families)]) for i in range(n_cases)
    ]
    return generate_cases(Path(out), specs, seed, config, shared)


__all__ = [
    "SPLITS",
    "TASK",
    "CaseRecord",
    "CaseSpec",
    "SynthConfig",
    "case_geometry",
    "generate_cases",
    "generate_dataset",
    "make_case",
    "pick_brain",
    "plan_probe",
    "random_orientation",
    "write_dataset_json",
]
