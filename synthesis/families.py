"""Simulator families: what a synthetic case looks like and how its brain moved.

No numpy, scipy or torch here: the command line builds its ``--family`` choices from
:data:`FAMILIES` at parse time. Each family is one frozen, typed settings dataclass (a
subclass of :class:`FamilySettings` whose defaults ARE the family), validated when built;
:func:`family_settings` returns the registered instance.

Where each number comes from is written next to it; the three sources are
(a) the 16 real RESECT pre-resection iUS volumes (``shared/data/resect_us``, statistics by
``benchmarks/simulator_realism.py``), (b) the 21 real RESECT MR/iUS landmark sets
(``shared/data/resect_tags``, rigid statistics by :func:`synthesis.calibration.resect_rigid_table`),
(c) the physics of ultrasound and published brain-shift magnitudes (REFERENCE.md section 4).
No family was tuned by running registration methods on it.

Families
--------
``pre-resection``
    RESECT-like: no cavity, a hyperechoic low-grade tumour, thin sulcal lines; the brain moved
    mostly rigidly (rotation and translation re-drawn from the RESECT tag fits) with about
    1 mm left after a best rigid fit; a share of cases is nearly aligned (1-1.5 mm).
``post-resection``
    ReMIND2Reg-like: an irregular resection cavity (anechoic saline or echogenic blood/clot,
    with or without a bright rim, with or without posterior enhancement) that stays a
    minority of the sector; sinking, cavity collapse and a smooth residual make a large
    non-rigid part.
``tissue-echo``
    iUS that echoes the MR tissue contrast: echogenicity close to a monotone map of the T1
    (dark CSF, grey darker than white); RESECT-like rigid motion, no cavity.
``weak-contrast``
    Narrow sector, grey and white matter nearly alike, thin bright sulci and falx, speckle
    dominated parenchyma; RESECT-like rigid motion, no cavity.
``legacy``
    The original renderer and deformation (kept for comparison with earlier results).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

from remind2reg.synthesis import labels as L
from remind2reg.synthesis.ultrasound_params import UltrasoundParams, label_table

PRE_RESECTION = "pre-resection"
POST_RESECTION = "post-resection"
TISSUE_ECHO = "tissue-echo"
WEAK_CONTRAST = "weak-contrast"
LEGACY = "legacy"
DEFAULT_FAMILY = POST_RESECTION  # ReMIND2Reg is post-resection

Range = tuple[float, float]

# Best rigid fit (synthesis.calibration.resect_rigid_table) of the 21 RESECT tag files,
# fixed = US, moving = MRI: (case, rotation in degrees, translation in mm at the landmark
# centroid, mean landmark distance left after the fit in mm). tests/test_families.py
# checks these numbers against the files when the shared data is there.
RESECT_RIGID: tuple[tuple[str, float, float, float], ...] = (
    ("Case1", 5.7, 1.19, 1.21), ("Case2", 13.8, 4.88, 1.37), ("Case3", 8.3, 9.44, 0.88),
    ("Case4", 5.9, 2.65, 1.11), ("Case5", 3.9, 11.96, 1.16), ("Case6", 2.0, 3.08, 1.14),
    ("Case7", 2.7, 1.29, 1.37), ("Case8", 3.4, 2.19, 1.37), ("Case12", 3.0, 19.66, 1.01),
    ("Case13", 9.4, 4.14, 1.03), ("Case14", 5.3, 2.49, 1.03), ("Case15", 6.4, 2.66, 1.48),
    ("Case16", 2.5, 3.24, 1.09), ("Case17", 6.0, 6.10, 1.30), ("Case18", 6.6, 3.36, 0.85),
    ("Case19", 4.8, 2.52, 0.97), ("Case21", 2.6, 4.37, 0.95), ("Case23", 7.0, 6.74, 0.99),
    ("Case25", 13.1, 9.99, 1.32), ("Case26", 2.1, 2.61, 1.18), ("Case27", 2.1, 5.63, 1.18),
)  # fmt: skip


def _check_range(owner: str, name: str, value: Range, lo: float, hi: float) -> None:
    a, b = value
    if not (lo <= a <= b <= hi):
        raise ValueError(f"{owner}.{name} must satisfy {lo} <= low <= high <= {hi}, got {value}")


def _check_probability(owner: str, name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{owner}.{name} must lie in [0, 1], got {value}")


@dataclass(frozen=True)
class SectorSettings:
    """Probe field of view, drawn uniformly per case (see :class:`synthesis.ultrasound.Sector`).

    Default: the RESECT ranges (imaged depth 39-48 mm; widths about 45 mm at the top growing
    to 55-70 mm, a fan of 45-65 x 30-45 degrees with its virtual apex 20-35 mm above the
    first imaged voxel), measured by :mod:`synthesis.calibration` on the 16 volumes.
    """

    near_mm: Range = (20.0, 35.0)
    imaged_depth_mm: Range = (38.0, 48.0)
    lateral_deg: Range = (45.0, 65.0)
    elevational_deg: Range = (30.0, 45.0)
    roll_deg: Range = (0.0, 180.0)
    probe_indent_mm: float = 1.5  # the probe presses on the cortex: first imaged voxel below it

    def __post_init__(self) -> None:
        if not 0.0 <= self.probe_indent_mm <= 10.0:
            raise ValueError(
                f"SectorSettings.probe_indent_mm must lie in [0, 10], got {self.probe_indent_mm}"
            )
        _check_range("SectorSettings", "near_mm", self.near_mm, 1.0, 100.0)
        _check_range("SectorSettings", "imaged_depth_mm", self.imaged_depth_mm, 5.0, 120.0)
        _check_range("SectorSettings", "lateral_deg", self.lateral_deg, 5.0, 120.0)
        _check_range("SectorSettings", "elevational_deg", self.elevational_deg, 5.0, 120.0)
        _check_range("SectorSettings", "roll_deg", self.roll_deg, -360.0, 360.0)

    def ranges(self) -> dict[str, Range]:
        """The ranges in the form :func:`synthesis.ultrasound.random_sector` takes."""
        return {
            "near_mm": self.near_mm,
            "imaged_depth_mm": self.imaged_depth_mm,
            "lateral_deg": self.lateral_deg,
            "elevational_deg": self.elevational_deg,
            "roll_deg": self.roll_deg,
        }


@dataclass(frozen=True)
class RigidShiftSettings:
    """Mostly rigid motion as measured on the RESECT tags (pre-resection, after dura opening).

    Per case one row of :data:`RESECT_RIGID` is drawn and its rotation angle and translation
    multiplied by ``exp(N(0, jitter))``; axis and direction are random; the pivot is the
    centre of the imaged sector (where the tags are). A smooth random field (Gaussian scale
    ``residual_smooth_mm``) is scaled so that the mean distance left after the best rigid fit
    at sector points is drawn from ``rigid_residual_mm``: the RESECT tags leave 0.85-1.48 mm,
    which includes 0.5-1 mm of landmark picking error that exact synthetic landmarks do not
    have, hence the lower bound. With probability ``nearly_aligned_share`` the case is nearly
    aligned instead: the rigid part is scaled down so that the mean initial error in the
    sector lies in ``nearly_aligned_tre_mm`` (REFERENCE section 6: a real pair at 1.1 mm,
    0.8 mm after a rigid fit, was made worse by every method).
    """

    kind: ClassVar[str] = "rigid"
    jitter: float = 0.15
    rigid_residual_mm: Range = (0.6, 1.3)
    residual_smooth_mm: Range = (10.0, 16.0)
    nearly_aligned_share: float = 0.25
    nearly_aligned_tre_mm: Range = (1.05, 1.45)
    nearly_aligned_residual_mm: Range = (0.5, 0.85)

    def __post_init__(self) -> None:
        name = "RigidShiftSettings"
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"{name}.jitter must lie in [0, 1], got {self.jitter}")
        _check_range(name, "rigid_residual_mm", self.rigid_residual_mm, 0.0, 10.0)
        _check_range(name, "residual_smooth_mm", self.residual_smooth_mm, 2.0, 60.0)
        _check_probability(name, "nearly_aligned_share", self.nearly_aligned_share)
        _check_range(name, "nearly_aligned_tre_mm", self.nearly_aligned_tre_mm, 0.1, 5.0)
        _check_range(name, "nearly_aligned_residual_mm", self.nearly_aligned_residual_mm, 0.0, 5.0)
        if self.nearly_aligned_residual_mm[1] >= self.nearly_aligned_tre_mm[0]:
            raise ValueError(f"{name}: the nearly aligned residual must stay below its initial error")


@dataclass(frozen=True)
class PostResectionShiftSettings:
    """Post-resection shift: ``rigid o exp(sinking + cavity collapse + smooth residual)``.

    The mean initial error of a case is drawn log-normal (median ``initial_tre_median_mm``,
    log-sd ``initial_tre_log_sd``, clipped to ``initial_tre_clip_mm``): the ReMIND2Reg means
    are 3.7 mm (2024 validation) and 5.1 mm (2025 test), and cortical shift at the end of
    resection spans 1-15 mm (mean 6.6 mm). Component magnitudes are relative (the whole field
    is scaled to the drawn error); they are chosen so that the best rigid fit leaves a large
    share of the initial error (REFERENCE section 3; 56 +- 10 % at sector points over 8 MNI
    cases): sinking is localised under the craniotomy (lateral width 12-22 mm, decay with
    depth 12-25 mm) and the cavity collapses.
    """

    kind: ClassVar[str] = "post-resection"
    initial_tre_median_mm: float = 4.3
    initial_tre_log_sd: float = 0.3
    initial_tre_clip_mm: Range = (2.0, 8.0)
    sink_mm: Range = (2.5, 5.0)
    sink_lateral_mm: Range = (12.0, 22.0)
    sink_decay_mm: Range = (12.0, 25.0)
    gravity_tilt_deg: Range = (0.0, 20.0)
    collapse_mm: Range = (1.2, 3.0)
    residual_mm: Range = (0.8, 1.6)
    residual_smooth_mm: Range = (7.0, 12.0)
    rotation_deg: Range = (1.5, 4.0)
    translation_mm: Range = (1.5, 4.0)

    def __post_init__(self) -> None:
        name = "PostResectionShiftSettings"
        if not 0.5 <= self.initial_tre_median_mm <= 20.0 or not 0.0 <= self.initial_tre_log_sd <= 1.5:
            raise ValueError(f"{name}: initial error median/log-sd out of range")
        _check_range(name, "initial_tre_clip_mm", self.initial_tre_clip_mm, 0.1, 30.0)
        for attr in ("sink_mm", "collapse_mm", "residual_mm", "translation_mm"):
            _check_range(name, attr, getattr(self, attr), 0.0, 30.0)
        for attr in ("sink_lateral_mm", "sink_decay_mm", "residual_smooth_mm"):
            _check_range(name, attr, getattr(self, attr), 1.0, 200.0)
        _check_range(name, "gravity_tilt_deg", self.gravity_tilt_deg, 0.0, 90.0)
        _check_range(name, "rotation_deg", self.rotation_deg, 0.0, 30.0)


@dataclass(frozen=True)
class LegacyShiftSettings:
    """The original deformation: :func:`synthesis.generate.draw_brain_shift` scaled to a mean
    initial error drawn uniformly from ``SynthConfig.initial_tre_mm``."""

    kind: ClassVar[str] = "legacy"


@dataclass(frozen=True)
class CavitySettings:
    """The resection cavity and its appearance variants (drawn per case).

    Shape: the part of the (warped) tumour nearest the craniotomy (``resected_fraction``) cut
    by an irregular (noisy) surface, plus an access corridor, with the wall displaced by smooth
    noise of sd ``wall_roughness_mm`` at scale ``wall_scale_mm`` (real walls are irregular and
    partly collapsed, Selbekk et al. 2013); at most ``max_sector_fraction`` of the sector (the
    part nearest the entry is kept). ``irregular=False`` is the legacy planar cut.

    Appearance: saline-filled and anechoic, or blood-filled/echogenic (clot, debris,
    haemostatic material) with ``echogenic_probability``; a bright, patchy rim (blood,
    haemostatic agents) with ``rim_probability``; posterior enhancement with
    ``enhancement_probability``: saline attenuates about 0.002 dB/cm/MHz against about
    0.6 in brain, so the tissue below is over-compensated by the TGC. Without enhancement the
    cavity holds a brain-mimicking acoustic coupling fluid (Selbekk et al. 2013) or blood
    (about 0.15-0.2 dB/cm/MHz).
    """

    resected_fraction: Range = (0.6, 1.0)
    corridor_probability: float = 0.7
    corridor_radius_mm: Range = (2.0, 4.5)
    irregular: bool = True
    wall_roughness_mm: Range = (0.8, 2.0)
    wall_scale_mm: Range = (2.0, 5.0)
    max_sector_fraction: float = 0.15
    echogenic_probability: float = 0.35
    rim_probability: float = 0.6
    enhancement_probability: float = 0.7
    anechoic_echo: Range = (0.01, 0.04)
    echogenic_echo: Range = (0.3, 0.8)
    echogenic_texture: Range = (0.4, 0.8)
    rim_echo: Range = (1.6, 3.0)
    rim_mm: Range = (0.5, 1.5)
    rim_coverage: Range = (0.4, 0.9)
    saline_attenuation: float = 0.002
    blood_attenuation: float = 0.18
    coupling_attenuation: Range = (0.4, 0.6)

    def __post_init__(self) -> None:
        name = "CavitySettings"
        _check_range(name, "resected_fraction", self.resected_fraction, 0.0, 1.0)
        for attr in ("corridor_probability", "max_sector_fraction", "echogenic_probability"):
            _check_probability(name, attr, getattr(self, attr))
        for attr in ("rim_probability", "enhancement_probability"):
            _check_probability(name, attr, getattr(self, attr))
        _check_range(name, "rim_coverage", self.rim_coverage, 0.0, 1.0)
        for attr in ("corridor_radius_mm", "wall_roughness_mm", "wall_scale_mm", "rim_mm"):
            _check_range(name, attr, getattr(self, attr), 0.0, 50.0)
        for attr in ("anechoic_echo", "echogenic_echo", "echogenic_texture", "rim_echo"):
            _check_range(name, attr, getattr(self, attr), 0.0, 10.0)
        _check_range(name, "coupling_attenuation", self.coupling_attenuation, 0.0, 5.0)
        if min(self.saline_attenuation, self.blood_attenuation) < 0:
            raise ValueError(f"{name}: attenuations must be >= 0")


# --------------------------------------------------------------------------------------------
# Renderer settings of the families
# --------------------------------------------------------------------------------------------

# Shared by the families that aim at real iUS appearance (the realism features switched on).
# Basis of each group of numbers (RESECT = the 16 real volumes, measured by
# benchmarks/simulator_realism.py):
# * echogenicity: grey and white matter nearly alike (white a little brighter), fluid
#   anechoic, low-grade tumour mildly hyperechoic (1.35 x white, impedance 1.38: a faint
#   boundary), falx bright;
# * attenuation (dB/cm/MHz, one way): fluid 0.002, grey 0.55, white 0.7, tumour 0.7, falx
#   1.5 (soft tissue 0.5-1); centre frequency 6 MHz (fan-shaped neuro probes work at about
#   4-10 MHz); the TGC undoes 55-100 % of 0.6 dB/cm/MHz: RESECT intensity changes gently with
#   depth (deepest bins / upper bins 0.64-1.53);
# * speckle: PSF sd 0.25 mm axial (a 2-cycle pulse at 6 MHz), 0.45 mm lateral, 0.7 mm
#   elevational (the slice thickness of freehand sweeps), x0.8-1.2 per case, two compounded
#   looks (overlapping sweeps); power-law compression gamma 0.4-0.6 and output median 17-47
#   (the RESECT medians): RESECT local mean/std in 3 mm windows is 3.4-7.5 (Rayleigh: 1.9);
# * display saturation: S tanh(x / S), S = 5-9 x the median (RESECT max / median 3.6-8.4);
# * thin sheets: the pia-arachnoid and vessels of sulci and the falx are reflectors much
#   thinner than the PSF (one voxel, profile sd 0.25 mm before the PSF), so their width in
#   the image is the PSF's; half of their echo is specular (needs the beam normal to them);
#   amplitude 14 x white matter (specular reflectors are 20+ dB above tissue scatter);
# * vessels: 5 short (3-10 mm) segments per ml of parenchyma at 35 x white matter (a line
#   thinner than a resolution cell must be that strong to show); the density is set so that
#   the bright-ridge density matches RESECT (0.001-0.029 ridge voxels per sector voxel);
# * the near-field line: RESECT shows a thin saturated line at the probe contact (first
#   depth bin 0.5-3.4 x bins 2-3); gain drawn per case, 1 mm decay;
# * the sector edge: the outermost voxel layer of RESECT is partial-volume (median 0.64 x
#   the sector median, 16 % of it below 10 % of the median; the near-zero fraction of a
#   whole RESECT sector, 0.9-2.6 %, sits almost entirely in that layer).
REALISTIC = UltrasoundParams(
    echo=label_table(
        {L.BACKGROUND: 0.08, L.CSF: 0.15, L.GREY_MATTER: 0.9, L.WHITE_MATTER: 1.0,
         L.VENTRICLE: 0.05, L.TUMOUR: 1.35, L.CAVITY: 0.05, L.FALX: 2.0}
    ),
    echo_spread=label_table(
        {L.BACKGROUND: 0.3, L.CSF: 0.3, L.GREY_MATTER: 0.06, L.WHITE_MATTER: 0.06,
         L.VENTRICLE: 0.3, L.TUMOUR: 0.3, L.CAVITY: 0.4, L.FALX: 0.2}
    ),
    sulcus_echo=0.5,
    impedance=label_table(
        {L.BACKGROUND: 1.0, L.CSF: 1.0, L.GREY_MATTER: 1.25, L.WHITE_MATTER: 1.3,
         L.VENTRICLE: 1.0, L.TUMOUR: 1.38, L.CAVITY: 1.0, L.FALX: 2.2}
    ),
    interface_sigma_mm=0.3,
    interface_gain=5.0,
    attenuation=label_table(
        {L.BACKGROUND: 0.002, L.CSF: 0.002, L.GREY_MATTER: 0.55, L.WHITE_MATTER: 0.7,
         L.VENTRICLE: 0.002, L.TUMOUR: 0.7, L.CAVITY: 0.002, L.FALX: 1.5}
    ),
    frequency_mhz=6.0,
    tgc_compensation=(0.55, 1.0),
    near_field_gain=10.0,
    near_field_mm=1.0,
    t1_weight=0.1,
    line_echo=14.0,
    line_threshold=0.035,
    vessel_density_per_ml=5.0,
    vessel_length_mm=(3.0, 10.0),
    vessel_echo=35.0,
    hetero_amp=0.25,
    hetero_mm=2.0,
    psf_axial_mm=0.25,
    psf_lateral_mm=0.45,
    psf_elevational_mm=0.7,
    psf_scale=(0.8, 1.2),
    compounding=2,
    beam_step_mm=0.25,
    beam_arc_voxels=0.6,
    gamma=(0.4, 0.6),
    out_median=(17.0, 47.0),
    saturation_ratio=(5.0, 9.0),
    edge_partial_volume=True,
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# The families
# --------------------------------------------------------------------------------------------

# Tumour inserted into the MNI brain, radius 9-16 mm (3-17 ml): gliomas at surgery are
# mostly 10-60 ml and metastases a few ml; with the sector's 90-150 ml and the cap of
# CavitySettings.max_sector_fraction the cavity stays a minority of the field of view.
TUMOUR_RADIUS_MM: Range = (9.0, 16.0)


@dataclass(frozen=True)
class FamilySettings:
    """Everything that makes a family; subclasses carry each family's defaults.

    ``near_field_gain``: drawn per case (replaces ``ultrasound.near_field_gain``); ``cavity``
    None: no resection; ``family_code`` enters the random seed of a case (0 for ``legacy``,
    whose cases stay those of the original generator); ``tumour_radius_mm``: radius of the
    tumour inserted into the MNI brain (None: ``SynthConfig.tumour_radius_mm``, 7-12 mm).
    """

    name: str
    description: str
    family_code: int
    sector: SectorSettings
    shift: RigidShiftSettings | PostResectionShiftSettings | LegacyShiftSettings
    ultrasound: UltrasoundParams
    cavity: CavitySettings | None
    near_field_gain: Range | None
    tumour_radius_mm: Range | None

    def __post_init__(self) -> None:
        if not self.name or self.family_code < 0:
            raise ValueError(f"a family needs a name and a code >= 0, got {self.name!r}, {self.family_code}")
        if self.near_field_gain is not None:
            _check_range(self.name, "near_field_gain", self.near_field_gain, 0.0, 20.0)
        if self.tumour_radius_mm is not None:
            _check_range(self.name, "tumour_radius_mm", self.tumour_radius_mm, 1.0, 40.0)
        if isinstance(self.shift, LegacyShiftSettings) != (self.name == LEGACY):
            raise ValueError("the legacy shift goes with the legacy family only")


@dataclass(frozen=True)
class PreResectionSettings(FamilySettings):
    name: str = PRE_RESECTION
    description: str = "RESECT-like pre-resection iUS; mostly rigid shift from the RESECT tags"
    family_code: int = 1
    sector: SectorSettings = field(default_factory=SectorSettings)
    shift: RigidShiftSettings | PostResectionShiftSettings | LegacyShiftSettings = field(
        default_factory=RigidShiftSettings
    )
    ultrasound: UltrasoundParams = REALISTIC
    cavity: CavitySettings | None = None
    near_field_gain: Range | None = (5.0, 20.0)
    tumour_radius_mm: Range | None = TUMOUR_RADIUS_MM


@dataclass(frozen=True)
class PostResectionSettings(FamilySettings):
    name: str = POST_RESECTION
    description: str = "ReMIND2Reg-like post-resection iUS with an irregular cavity; large non-rigid shift"
    family_code: int = 2
    sector: SectorSettings = field(default_factory=SectorSettings)
    shift: RigidShiftSettings | PostResectionShiftSettings | LegacyShiftSettings = field(
        default_factory=PostResectionShiftSettings
    )
    ultrasound: UltrasoundParams = REALISTIC
    cavity: CavitySettings | None = field(default_factory=CavitySettings)
    near_field_gain: Range | None = (5.0, 20.0)
    tumour_radius_mm: Range | None = TUMOUR_RADIUS_MM


# Tissue echo: the echogenicity follows the T1 (90 % of the amplitude is (T1/T1_wm)^3, so that
# after the display compression grey/white is about the T1's 0.7 and CSF is dark), weak
# sulcal sheets, fewer vessels and less texture; a wide RESECT sector.
TISSUE_ECHO_US = replace(
    REALISTIC,
    t1_echo_mix=0.9,
    t1_echo_power=3.0,
    sulcus_echo=0.15,
    line_echo=2.5,
    vessel_density_per_ml=2.0,
    hetero_amp=0.15,
    gamma=(0.45, 0.65),
)


@dataclass(frozen=True)
class TissueEchoSettings(FamilySettings):
    name: str = TISSUE_ECHO
    description: str = "iUS echoing the MR tissue contrast (monotone-ish map of the T1); rigid shift"
    family_code: int = 3
    sector: SectorSettings = field(default_factory=lambda: SectorSettings(lateral_deg=(55.0, 70.0)))
    shift: RigidShiftSettings | PostResectionShiftSettings | LegacyShiftSettings = field(
        default_factory=lambda: RigidShiftSettings(nearly_aligned_share=0.0)
    )
    ultrasound: UltrasoundParams = TISSUE_ECHO_US
    cavity: CavitySettings | None = None
    near_field_gain: Range | None = (4.0, 12.0)
    tumour_radius_mm: Range | None = TUMOUR_RADIUS_MM


# Weak contrast: grey = 0.97 x white with little spread, hypo-contrast tumour (1.3), strong
# thin sheets, more tissue heterogeneity and rougher speckle (higher gamma); a narrow sector
# (RESECT's estimated narrow opening is 25 +- 22 degrees, many fans are thin).
WEAK_CONTRAST_US = replace(
    REALISTIC,
    echo=label_table(
        {L.BACKGROUND: 0.08, L.CSF: 0.2, L.GREY_MATTER: 0.97, L.WHITE_MATTER: 1.0,
         L.VENTRICLE: 0.05, L.TUMOUR: 1.3, L.CAVITY: 0.05, L.FALX: 2.5}
    ),
    echo_spread=label_table(
        {L.BACKGROUND: 0.3, L.CSF: 0.3, L.GREY_MATTER: 0.03, L.WHITE_MATTER: 0.03,
         L.VENTRICLE: 0.3, L.TUMOUR: 0.2, L.CAVITY: 0.4, L.FALX: 0.2}
    ),
    t1_weight=0.04,
    line_echo=9.0,
    hetero_amp=0.3,
    gamma=(0.45, 0.6),
)  # fmt: skip


@dataclass(frozen=True)
class WeakContrastSettings(FamilySettings):
    name: str = WEAK_CONTRAST
    description: str = (
        "narrow sector, weak grey/white contrast, thin bright sulci and falx, speckle-dominated"
    )
    family_code: int = 4
    sector: SectorSettings = field(
        default_factory=lambda: SectorSettings(lateral_deg=(30.0, 42.0), elevational_deg=(18.0, 30.0))
    )
    shift: RigidShiftSettings | PostResectionShiftSettings | LegacyShiftSettings = field(
        default_factory=lambda: RigidShiftSettings(nearly_aligned_share=0.0)
    )
    ultrasound: UltrasoundParams = WEAK_CONTRAST_US
    cavity: CavitySettings | None = None
    near_field_gain: Range | None = (5.0, 20.0)
    tumour_radius_mm: Range | None = TUMOUR_RADIUS_MM


@dataclass(frozen=True)
class LegacySettings(FamilySettings):
    name: str = LEGACY
    description: str = "the original simulator (post-resection, box-like cavity, legacy renderer)"
    family_code: int = 0
    sector: SectorSettings = field(default_factory=lambda: SectorSettings(probe_indent_mm=0.0))
    shift: RigidShiftSettings | PostResectionShiftSettings | LegacyShiftSettings = field(
        default_factory=LegacyShiftSettings
    )
    ultrasound: UltrasoundParams = field(default_factory=UltrasoundParams)
    cavity: CavitySettings | None = field(
        default_factory=lambda: CavitySettings(
            irregular=False, max_sector_fraction=1.0, echogenic_probability=0.0,
            rim_probability=1.0, enhancement_probability=1.0,
        )
    )  # fmt: skip
    near_field_gain: Range | None = None
    tumour_radius_mm: Range | None = None


_REGISTRY: dict[str, FamilySettings] = {
    s.name: s
    for s in (
        PreResectionSettings(),
        PostResectionSettings(),
        TissueEchoSettings(),
        WeakContrastSettings(),
        LegacySettings(),
    )
}
FAMILIES: tuple[str, ...] = tuple(_REGISTRY)
# The four families that span real iUS appearance (the standard benchmark set uses these).
REALISTIC_FAMILIES: tuple[str, ...] = (PRE_RESECTION, POST_RESECTION, TISSUE_ECHO, WEAK_CONTRAST)


def family_settings(name: str) -> FamilySettings:
    """The registered settings of family ``name`` (one of :data:`FAMILIES`)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; choose one of {', '.join(FAMILIES)}") from None


__all__ = [
    "DEFAULT_FAMILY",
    "FAMILIES",
    "LEGACY",
    "POST_RESECTION",
    "PRE_RESECTION",
    "REALISTIC_FAMILIES",
    "RESECT_RIGID",
    "TISSUE_ECHO",
    "WEAK_CONTRAST",
    "CavitySettings",
    "FamilySettings",
    "LegacySettings",
    "LegacyShiftSettings",
    "PostResectionSettings",
    "PostResectionShiftSettings",
    "PreResectionSettings",
    "RigidShiftSettings",
    "SectorSettings",
    "TissueEchoSettings",
    "WeakContrastSettings",
    "family_settings",
]
