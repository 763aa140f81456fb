"""Synthetic ReMIND2Reg-format datasets with known ground truth (``remind2reg synth``).

One case is made in these steps (each a function below):

1. ``pick_brain``: a pre-operative brain (MNI152 with an inserted tumour, or a real MRI);
2. ``plan_probe``: a craniotomy at the brain surface nearest the tumour, the probe sector;
3. ``case_geometry``: a 256^3, 0.5 mm oblique grid centred on the sector (real ReMIND2Reg
   orientations when ``../shared`` is there, random oblique ones otherwise);
4. ``resample_moving``: the ceT1 / T2 / labels on that grid (the moving images);
5. ``brain_shift``: a known fixed -> moving deformation, scaled to a drawn initial TRE;
6. ``intraoperative_anatomy``: the anatomy warped into the fixed frame, with the resection
   cavity cut out;
7. ``render_ultrasound`` (``synthesis.ultrasound``): the post-resection iUS (fixed image);
8. ``place_landmarks``: corner points in the sector, moved by the ground truth.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from remind2reg.evaluation.metrics import sample_displacement
from remind2reg.inference.core.pointfit import rigid_fit_residual
from remind2reg.inference.errors import InputError
from remind2reg.inference.geometry import apply_affine, compose_affine_displacement
from remind2reg.inference.io.atomic import write_text_atomic
from remind2reg.inference.io.landmarks import write_landmarks_csv
from remind2reg.inference.io.nifti import write_image
from remind2reg.synthesis import labels as L
from remind2reg.synthesis.brainshift import (
    BrainShiftParams,
    CoarseGrid,
    magnitude_mm,
    nonrigid_displacement_coarse,
    rigid_fixed2moving_world,
    smooth_noise,
    upsample,
)
from remind2reg.synthesis.landmarks import pick_landmarks
from remind2reg.synthesis.sources import SHARED_SUBJECTS, SourceBrain, insert_tumour, load_mni, load_shared
from remind2reg.synthesis.ultrasound import Sector, random_sector, render_ultrasound, sector_bbox, sector_mask
from scipy import ndimage
from scipy.spatial.transform import Rotation
from tqdm import tqdm

log = logging.getLogger(__name__)

TASK = "ReMIND2Reg"
# ../shared/data beside the repository, unless REMIND2REG_SHARED_DATA says otherwise.
DEFAULT_SHARED = Path(
    os.environ.get("REMIND2REG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
GEOMETRY_FILE = Path("remind2reg_geometry") / "validation_affines.json"


@dataclass(frozen=True)
class SynthConfig:
    """Settings of the generator (lengths in mm)."""

    grid: int = 256  # voxels per side
    fov_mm: float = 128.0  # side of the cube (ReMIND2Reg: 256 x 0.5 mm)
    n_landmarks: int = 15
    min_landmark_separation_mm: float = 8.0
    initial_tre_mm: tuple[float, float] = (3.5, 5.0)  # drawn target of the mean initial TRE
    coarse_mm: float = 2.0  # spacing on which the velocity field is integrated
    t2_probability: float = 1.0  # chance that a case has a T2 (ReMIND2Reg: 62 of 99)
    resected_fraction: tuple[float, float] = (0.6, 1.0)
    corridor_probability: float = 0.7  # chance of a saline-filled access corridor
    tumour_radius_mm: tuple[float, float] = (7.0, 12.0)  # MNI source only
    tumour_depth_mm: tuple[float, float] = (10.0, 22.0)  # MNI source only, below the surface

    @property
    def spacing_mm(self) -> float:
        return self.fov_mm / self.grid


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
    extras: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# 1-3: brain, probe and grid
# --------------------------------------------------------------------------------------------


def pick_brain(
    source: str, index: int, rng: np.random.Generator, config: SynthConfig, shared: Path
) -> SourceBrain:
    """The pre-operative brain of case ``index`` (cached loads; MNI gets a random tumour)."""
    if source == "shared":
        subjects = sorted(SHARED_SUBJECTS)
        return _cached(
            ("shared", subjects[index % len(subjects)]),
            lambda: load_shared(shared, subjects[index % len(subjects)]),
        )
    brain = _cached(("mni",), load_mni)
    labels = brain.labels
    inside = labels != L.BACKGROUND
    depth = _surface_depth(inside)
    z_world = apply_affine(brain.vox2world, np.argwhere(inside))[:, 2]
    lo, hi = config.tumour_depth_mm
    candidates = np.argwhere(inside)[
        (depth[inside] >= lo)
        & (depth[inside] <= hi)
        & (z_world > 0.0)
        & np.isin(labels[inside], [L.GREY_MATTER, L.WHITE_MATTER])
    ]
    centre = candidates[rng.integers(len(candidates))].astype(np.float64)
    radius = float(rng.uniform(*config.tumour_radius_mm))
    return insert_tumour(brain, centre, radius, rng, enhancing=bool(rng.random() < 0.5))


_CACHE: dict[tuple, SourceBrain] = {}


def _cached(key: tuple, load) -> SourceBrain:
    if key not in _CACHE:
        _CACHE[key] = load()
    return _CACHE[key]


def _surface_depth(inside: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Distance (voxels of the 1 mm source grid) to the outside of the closed brain mask."""
    filled = ndimage.binary_fill_holes(ndimage.binary_closing(inside, iterations=3))
    return ndimage.distance_transform_edt(filled)


@dataclass(frozen=True)
class ProbePlan:
    """Craniotomy and probe, in the source's world mm."""

    surface_world: NDArray  # where the probe touches the brain
    beam_world: NDArray  # unit vector into the brain
    tumour_world: NDArray
    tumour_radius_mm: float


def plan_probe(brain: SourceBrain, rng: np.random.Generator, max_tilt_deg: float = 15.0) -> ProbePlan:
    """Craniotomy at the brain surface nearest the tumour, beam tilted by up to ``max_tilt_deg``."""
    tumour = brain.labels == L.TUMOUR
    inside = brain.labels != L.BACKGROUND
    tumour_vox = np.argwhere(tumour).mean(axis=0)
    filled = ndimage.binary_fill_holes(ndimage.binary_closing(inside, iterations=3))
    # Nearest outside voxel of the tumour centre: the EDT's feature transform of the outside.
    _, nearest = ndimage.distance_transform_edt(filled, return_indices=True)
    centre_idx = tuple(np.round(tumour_vox).astype(int))
    surface_vox = nearest[(slice(None), *centre_idx)].astype(np.float64)
    to_tumour = (
        apply_affine(brain.vox2world, tumour_vox[None])[0]
        - apply_affine(brain.vox2world, surface_vox[None])[0]
    )
    beam = to_tumour / np.linalg.norm(to_tumour)
    tilt = Rotation.from_rotvec(np.deg2rad(rng.uniform(0, max_tilt_deg)) * _random_perpendicular(beam, rng))
    beam = tilt.apply(beam)
    tumour_world = apply_affine(brain.vox2world, tumour_vox[None])[0]
    # The probe sits where the tilted beam through the tumour centre leaves the brain.
    step = 0.5
    point = tumour_world.copy()
    world2vox = np.linalg.inv(brain.vox2world)
    for _ in range(400):
        vox = np.round(apply_affine(world2vox, point[None])[0]).astype(int)
        if (vox < 0).any() or (vox >= filled.shape).any() or not filled[tuple(vox)]:
            break
        point -= step * beam
    radius = float(
        (3.0 * tumour.sum() * np.prod(np.linalg.norm(brain.vox2world[:3, :3], axis=0)) / (4 * np.pi))
        ** (1 / 3)
    )
    return ProbePlan(surface_world=point, beam_world=beam, tumour_world=tumour_world, tumour_radius_mm=radius)


def _random_perpendicular(v: NDArray, rng: np.random.Generator) -> NDArray:
    w = np.cross(v, rng.standard_normal(3))
    return w / np.linalg.norm(w)


def load_template_orientations(shared: Path) -> list[NDArray]:
    """Direction matrices (3x3, unit columns) of the real ReMIND2Reg validation grids, if present."""
    path = shared / GEOMETRY_FILE
    if not path.is_file():
        return []
    meta = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for entry in meta.values():
        lin = np.asarray(entry["affine_vox2ras"], dtype=np.float64)[:3, :3]
        out.append(lin / np.linalg.norm(lin, axis=0))
    return out


def random_orientation(rng: np.random.Generator, max_tilt_deg: float = 20.0) -> NDArray:
    """An oblique direction matrix like those of ReMIND2Reg: a signed axis permutation
    (RPI, PIR, LPS, ...) tilted by up to ``max_tilt_deg`` about a random axis."""
    perm = np.eye(3)[rng.permutation(3)] * rng.choice([-1.0, 1.0], size=3)[:, None]
    tilt = Rotation.from_rotvec(
        np.deg2rad(rng.uniform(0, max_tilt_deg)) * _random_perpendicular(rng.standard_normal(3), rng)
    )
    return tilt.as_matrix() @ perm.T


def case_geometry(
    orientation: NDArray, spacing_mm: float, grid: int, centre_world: NDArray
) -> NDArray[np.float64]:
    """``vox2world`` of a ``grid^3`` cube with the given directions whose centre is ``centre_world``."""
    vox2world = np.eye(4)
    vox2world[:3, :3] = orientation * spacing_mm
    centre_vox = np.full(3, (grid - 1) / 2.0)
    vox2world[:3, 3] = centre_world - vox2world[:3, :3] @ centre_vox
    return vox2world


def resample_moving(brain: SourceBrain, vox2world: NDArray, grid: int) -> dict[str, NDArray]:
    """ceT1, T2 (trilinear) and labels (nearest) of the brain on the case grid."""
    case2source = np.linalg.inv(brain.vox2world) @ vox2world  # case voxel -> source voxel
    shape = (grid, grid, grid)

    def warp(image: NDArray, order: int) -> NDArray:
        return ndimage.affine_transform(
            image, case2source[:3, :3], offset=case2source[:3, 3], output_shape=shape, order=order
        )

    return {"t1": warp(brain.t1, 1), "t2": warp(brain.t2, 1), "labels": warp(brain.labels, 0)}


# --------------------------------------------------------------------------------------------
# 5-8: deformation, intra-operative anatomy, ultrasound, landmarks
# --------------------------------------------------------------------------------------------


def draw_brain_shift(plan: ProbePlan, resected: bool, rng: np.random.Generator) -> BrainShiftParams:
    """Random component magnitudes (before scaling), as reported for post-resection shift."""
    gravity = Rotation.from_rotvec(
        np.deg2rad(rng.uniform(0, 20)) * _random_perpendicular(plan.beam_world, rng)
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
        rotation_axis_world=tuple(_random_perpendicular(rng.standard_normal(3), rng)),
        translation_world=tuple(translation),
        pivot_world=tuple(plan.surface_world),
        apex_world=tuple(plan.surface_world),
        beam_world=tuple(plan.beam_world),
    )


def brain_shift(
    params: BrainShiftParams,
    vox2world: NDArray,
    grid: int,
    sector: NDArray[np.bool_],
    target_mean_mm: float,
    config: SynthConfig,
    rng: np.random.Generator,
) -> tuple[NDArray[np.float32], BrainShiftParams, float]:
    """The fixed -> moving field ``(grid, grid, grid, 3)`` (voxels), scaled so that the mean
    ``|u|`` where landmarks can lie (the sector eroded by 3 mm) is about ``target_mean_mm``. Returns (field, params, scale)."""
    step = max(1, round(config.coarse_mm / config.spacing_mm))
    coarse = CoarseGrid((grid, grid, grid), step)
    noise = smooth_noise(coarse.shape, params.residual_smooth_mm / (step * config.spacing_mm), rng)
    points = coarse.fine_voxels()
    inside = np.minimum(points, grid - 1).astype(int)
    sector_coarse = sector[inside[..., 0], inside[..., 1], inside[..., 2]]  # sector at coarse points
    points = points[sector_coarse]
    scale = 1.0
    for _ in range(3):  # fixed-point iteration: exp(v) is not linear in the scale
        p = params.scaled(scale)
        u_nr = nonrigid_displacement_coarse(p, vox2world, coarse, noise)
        rigid_vox = np.linalg.inv(vox2world) @ rigid_fixed2moving_world(p) @ vox2world
        moved = apply_affine(rigid_vox, points + u_nr[sector_coarse])
        mean_mm = float(magnitude_mm(moved - points, vox2world).mean())
        scale *= target_mean_mm / max(mean_mm, 1e-6)
    p = params.scaled(scale)
    u_nr = nonrigid_displacement_coarse(p, vox2world, coarse, noise)
    disp = compose_affine_displacement(
        upsample(u_nr, step, (grid, grid, grid)), rigid_fixed2moving_world(p), vox2world
    )
    return disp, p, scale


def intraoperative_anatomy(
    moving: dict[str, NDArray],
    disp: NDArray,
    bbox: tuple[slice, ...],
    plan: ProbePlan,
    vox2world: NDArray,
    rng: np.random.Generator,
    config: SynthConfig,
) -> tuple[NDArray[np.uint8], NDArray[np.float32], float, bool]:
    """Labels and T1 in the fixed frame (inside ``bbox``; zero elsewhere) with the cavity.

    ``fixed(x) = moving(x + u(x))``. The part of the (warped) tumour nearest the probe is
    resected (a drawn fraction) and becomes saline-filled CAVITY, optionally with an access
    corridor to the surface. Returns (labels, t1, resected fraction, corridor).
    """
    shape = disp.shape[:3]
    origin = np.array([s.start for s in bbox], dtype=np.float64)
    box_shape = tuple(s.stop - s.start for s in bbox)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in box_shape], indexing="ij"), 0)
    coords = grid + origin[:, None, None, None].astype(np.float32) + np.moveaxis(disp[bbox], -1, 0)
    labels_box = ndimage.map_coordinates(moving["labels"], coords, order=0, mode="constant", cval=0).astype(
        np.uint8
    )
    t1_box = ndimage.map_coordinates(moving["t1"], coords, order=1, mode="constant", cval=0.0).astype(
        np.float32
    )
    del coords, grid

    tumour = labels_box == L.TUMOUR
    fraction = float(rng.uniform(*config.resected_fraction))
    corridor = bool(rng.random() < config.corridor_probability)
    if tumour.any():
        world = apply_affine(vox2world, np.argwhere(tumour) + origin)
        depth = (world - plan.surface_world) @ plan.beam_world
        cut = np.quantile(depth, fraction)
        cavity = np.zeros_like(tumour)
        cavity[tuple(np.argwhere(tumour)[depth <= cut].T)] = True
        if corridor:
            cavity |= _corridor(box_shape, origin, vox2world, plan, rng) & (labels_box != L.BACKGROUND)
        labels_box[cavity] = L.CAVITY
    labels = np.zeros(shape, dtype=np.uint8)
    t1 = np.zeros(shape, dtype=np.float32)
    labels[bbox] = labels_box
    t1[bbox] = t1_box
    return labels, t1, fraction, corridor


def _corridor(box_shape, origin, vox2world, plan: ProbePlan, rng) -> NDArray[np.bool_]:
    """Voxels within a drawn radius of the segment from the surface to the tumour centre."""
    radius = rng.uniform(3.0, 6.0)
    pts = apply_affine(vox2world, np.argwhere(np.ones(box_shape, dtype=bool)) + origin)
    seg = plan.tumour_world - plan.surface_world
    t = np.clip(((pts - plan.surface_world) @ seg) / (seg @ seg), 0.0, 1.0)
    dist = np.linalg.norm(pts - (plan.surface_world + t[:, None] * seg), axis=1)
    return (dist <= radius).reshape(box_shape)


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


def make_case(
    case: str,
    index: int,
    out: Path,
    source: str,
    seed: int,
    config: SynthConfig,
    shared: Path,
    orientations: list[NDArray],
) -> CaseRecord:
    """Generate and write one case; returns its record."""
    rng = np.random.default_rng([seed, index])
    brain = pick_brain(source, index, rng, config, shared)
    plan = plan_probe(brain, rng)
    spacing, grid = config.spacing_mm, config.grid
    orientation = orientations[index % len(orientations)] if orientations else random_orientation(rng)

    # The sector (voxel frame) is drawn first so that the cube can be centred on it.
    beam_vox = np.linalg.inv(orientation) @ plan.beam_world
    draft = random_sector((0.0, 0.0, 0.0), tuple(beam_vox), rng)
    imaged_mid = plan.surface_world + plan.beam_world * 0.5 * (draft.depth_mm - draft.near_mm)
    vox2world = case_geometry(orientation, spacing, grid, imaged_mid)
    apex_world = plan.surface_world - plan.beam_world * draft.near_mm
    apex_vox = apply_affine(np.linalg.inv(vox2world), apex_world[None])[0]
    sector = Sector(
        apex_vox=tuple(apex_vox),
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

    moving = resample_moving(brain, vox2world, grid)
    target = float(rng.uniform(*config.initial_tre_mm))
    params = draw_brain_shift(plan, resected=True, rng=rng)
    disp, params, scale = brain_shift(params, vox2world, grid, inner, target, config, rng)
    fixed_labels, fixed_t1, fraction, corridor = intraoperative_anatomy(
        moving, disp, bbox, plan, vox2world, rng, config
    )
    us = render_ultrasound(fixed_labels, fixed_t1, spacing, sector, rng)

    fix_lms = place_landmarks(fixed_labels, fixed_t1, mask, bbox, spacing, config, rng)
    if len(fix_lms) < config.n_landmarks:
        log.warning("Case %s: only %d landmarks found in the sector", case, len(fix_lms))
    mov_lms = fix_lms + sample_displacement(disp, fix_lms)  # the official cubic sampling
    fix_mm, mov_mm = apply_affine(vox2world, fix_lms), apply_affine(vox2world, mov_lms)
    tre0 = np.linalg.norm((mov_lms - fix_lms) * spacing, axis=1)
    has_t2 = bool(rng.random() < config.t2_probability)

    _write_case(out, case, vox2world, us, moving, has_t2, fix_lms, mov_lms, disp, fixed_labels)
    record = CaseRecord(
        case=case,
        source=brain.name,
        spacing_mm=spacing,
        vox2world=vox2world.tolist(),
        has_t2=has_t2,
        sector={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(sector).items()},
        brain_shift={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(params).items()},
        scale=scale,
        n_landmarks=len(fix_lms),
        initial_tre_mean_mm=float(tre0.mean()),
        initial_tre_max_mm=float(tre0.max()),
        initial_tre_min_mm=float(tre0.min()),
        rigid_residual_mm=rigid_fit_residual(fix_mm, mov_mm),
        extras={"target_initial_tre_mm": target, "resected_fraction": fraction, "corridor": corridor},
    )
    write_text_atomic(out / "groundtruth" / f"case_{case}.json", json.dumps(asdict(record), indent=2))
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
    """``ReMIND2Reg_dataset.json`` in the Learn2Reg schema; all pairs are in registration_val."""
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
        "description": "Synthetic ReMIND2Reg-format data made by `remind2reg synth` (simulated post-resection iUS)",
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


def generate_dataset(
    out: str | Path,
    n_cases: int,
    source: str = "mni",
    seed: int = 0,
    config: SynthConfig | None = None,
    shared_data: str | Path | None = None,
    first_case: int = 1,
) -> list[CaseRecord]:
    """Generate ``n_cases`` synthetic cases into ``out`` and print their summary."""
    config = config or SynthConfig()
    out = Path(out)
    shared = Path(shared_data) if shared_data is not None else DEFAULT_SHARED
    if source == "shared" and not (shared / "mri").is_dir():
        raise InputError(
            "--source shared needs the shared MRI folder (set --shared-data)", path=shared / "mri"
        )
    orientations = load_template_orientations(shared)
    log.info(
        "Orientations: %s",
        f"{len(orientations)} real ReMIND2Reg grids"
        if orientations
        else "random oblique (no shared geometry found)",
    )
    records = []
    for index in tqdm(range(n_cases), desc="synth", unit="case"):
        case = f"{first_case + index:04d}"
        records.append(make_case(case, index, out, source, seed, config, shared, orientations))
        log.info(
            "Case %s (%s): %d landmarks, initial TRE %.2f mm (%.2f-%.2f), after best rigid fit %.2f mm",
            case, records[-1].source, records[-1].n_landmarks, records[-1].initial_tre_mean_mm,
            records[-1].initial_tre_min_mm, records[-1].initial_tre_max_mm, records[-1].rigid_residual_mm,
        )  # fmt: skip
    write_dataset_json(out, records, config)
    return records
