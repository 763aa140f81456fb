"""Typed settings of every stage, and the registries of names (torch-free, numpy-free).

Reading a config file, building the command line and printing ``--help`` import only this
module and :mod:`remind2reg.inference.config`: neither torch nor nibabel. Every dataclass is
frozen and validated when it is built (:class:`SettingsError` names the offending key); the
config loader adds the key path (``config.convex.levels[0].grid_sp``).

Lengths are in voxels of the WORKING grid (``RegistrationConfig.working_spacing_mm``) unless
a name says ``_mm``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# -- registries of names -------------------------------------------------------------------

#: Registration methods of ``remind2reg register --method`` (:mod:`remind2reg.inference.methods`).
METHODS: tuple[str, ...] = (
    "convex-adam",
    "identity",
    "niftyreg-rigid",
    "niftyreg-affine",
    "blockmatch-rigid",
    "blockmatch-affine",
)
#: How ceT1 and T2 are combined: separately, one joint cost, or fields fused by mean / max.
FUSIONS: tuple[str, ...] = ("none", "joint", "mean", "max", "primary")
#: Engines of the global (rigid/affine) stage; "none" keeps the header alignment.
AFFINE_METHODS: tuple[str, ...] = ("none", "blockmatch", "niftyreg", "search")
#: Transform models of the global stage and of point-set fits.
TRANSFORMS: tuple[str, ...] = ("rigid", "affine")
#: How the levels of the convex stage are combined.
COMBINES: tuple[str, ...] = ("last", "weighted")
#: Similarities of the refinement's test-time optimisation.
SIMILARITIES: tuple[str, ...] = ("mind", "ncc")
#: What the test-time optimisation updates.
TTO_TARGETS: tuple[str, ...] = ("network", "velocity")
#: Criteria of the guard: independent of the optimised MIND SSD.
GUARD_CRITERIA: tuple[str, ...] = ("nmi", "lc2")
#: What a batch does with a case that fails (``--on-error``).
ON_ERROR_POLICIES: tuple[str, ...] = ("fail", "skip", "identity")
#: Compute devices of the command line; "auto" is CUDA when available, else the CPU.
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
#: ``--modalities`` of the command line: the moving sequences (file suffixes) each name selects.
MODALITY_CHOICES: dict[str, tuple[str, ...]] = {"both": ("0001", "0002"), "ceT1": ("0001",), "T2": ("0002",)}


def parse_scheduler(value: str) -> tuple[str, int | None]:
    """``--scheduler``: ``("local", N or None)`` for ``local[:N]``, ``("address", None)`` for a
    scheduler address (``tcp://host:8786``, ``host:8786``); ValueError when malformed."""
    if value == "local" or value.startswith("local:"):
        count = value.partition(":")[2]
        if count and (not count.isdigit() or int(count) < 1):
            raise ValueError(f"local:N needs a positive worker count, got {value!r}")
        return "local", int(count) if count else None
    if ":" not in value:
        raise ValueError(
            f"expected local, local:N or a scheduler address like tcp://host:8786, got {value!r}"
        )
    return "address", None


class SettingsError(ValueError):
    """A setting is out of range or of the wrong type; the message names the key."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise SettingsError(message)


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _positive(name: str, value: float) -> None:
    _require(value > 0, f"{name} must be > 0; got {value!r}")


def _non_negative(name: str, value: float) -> None:
    _require(value >= 0, f"{name} must be >= 0; got {value!r}")


# -- features ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MindSettings:
    radius: int = 1  # box half-size (working voxels)
    dilation: int = 2  # neighbour distance (working voxels)
    use_sector_mask: bool = True  # masked MIND on the US: the sector border adds no structure

    def __post_init__(self) -> None:
        _non_negative("radius", self.radius)
        _positive("dilation", self.dilation)


# -- global stage --------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockLevel:
    grid_sp: int  # working voxels per block (cell)
    disp_hw: int  # search half-width in cells: +- grid_sp * disp_hw working voxels
    iterations: int = 3  # match -> fit rounds at this level

    def __post_init__(self) -> None:
        _positive("grid_sp", self.grid_sp)
        _positive("disp_hw", self.disp_hw)
        _positive("iterations", self.iterations)


@dataclass(frozen=True)
class BlockMatchSettings:
    """MIND-SSC block matching with a least-trimmed-squares fit (:mod:`~remind2reg.inference.affine.blockmatch`)."""

    levels: tuple[BlockLevel, ...] = (
        BlockLevel(grid_sp=4, disp_hw=4, iterations=2),  # 4 mm blocks, +-16 mm
        BlockLevel(grid_sp=2, disp_hw=2, iterations=1),  # 2 mm blocks, +-4 mm
    )
    block_fraction: float = 0.5  # keep this fraction of sector cells: the most textured (-pv)
    min_sector_fraction: float = 0.75  # a cell must lie this much inside the sector
    inlier_fraction: float = 0.5  # LTS: matches kept per refit (-pi); tolerates < 1 - this outliers
    lts_iterations: int = 20

    def __post_init__(self) -> None:
        _require(
            0 < self.inlier_fraction <= 1 and 0 < self.block_fraction <= 1,
            "inlier_fraction and block_fraction must be in (0, 1]",
        )
        _require(0 <= self.min_sector_fraction <= 1, "min_sector_fraction must be in [0, 1]")
        _require(bool(self.levels), "levels must not be empty")
        _positive("lts_iterations", self.lts_iterations)


@dataclass(frozen=True)
class AladinSettings:
    """NiftyReg ``reg_aladin`` (:mod:`~remind2reg.inference.affine.niftyreg`).

    Defaults follow the organisers' ReMIND2Reg baseline (-noSym -nac -ln 2 -lp 10, both
    masks), with inputs averaged to 1 mm so that its two levels run at 2 and 1 mm.
    """

    working_spacing_mm: float = 1.0  # images are averaged down to about this spacing first
    rigid_only: bool = False  # False: rigid, then affine initialised by the rigid result
    symmetric: bool = False
    levels: int = 2  # -ln: pyramid levels built
    levels_to_perform: int = 2  # -lp: of which the coarsest ones are run
    block_percent: int = 50  # -pv: % of blocks (highest variance) used
    inlier_percent: int = 50  # -pi: % of matches kept by the least trimmed squares fit
    threads: int | None = None  # -omp; None: NiftyReg's default
    use_masks: bool = True  # -rmask (the US sector) and -fmask (MR > 0); "plain" reg_aladin has none
    header_init: bool = True  # -nac: start from the header alignment (False: from the image centres)
    crop_reference: bool = False  # the US cropped to its sector's bounding box (a stand-alone iUS volume)

    def __post_init__(self) -> None:
        _positive("working_spacing_mm", self.working_spacing_mm)
        _positive("levels", self.levels)
        _require(0 < self.levels_to_perform <= self.levels, "levels_to_perform must be in 1..levels")
        _require(0 < self.block_percent <= 100 and 0 < self.inlier_percent <= 100, "percentages in 1..100")


@dataclass(frozen=True)
class RigidSearchSettings:
    """Multi-start rigid optimisation of the MIND similarity (:mod:`~remind2reg.inference.affine.rigid_search`)."""

    start_angles_deg: tuple[float, ...] = (12.0,)  # starts: identity and +-each angle about each axis
    search_grid_sp: int = 8  # translation search on features pooled by this (working voxels)
    search_hw: int = 2  # ... over +-search_hw cells (+-16 mm at 1 mm, 8 mm cells)
    screen_iterations: int = 30  # Adam steps on features pooled by 4, for every start
    coarse_iterations: int = 30  # then, for the best start, on features pooled by 2 ...
    fine_iterations: int = 10  # ... and at the working resolution
    fine_stride: int = 4  # the working-resolution cost uses every n-th sector voxel
    lr_rotation_deg: float = 0.5  # Adam step of the rotation vector (degrees)
    lr_translation_mm: float = 0.3  # Adam step of the translation (mm)

    def __post_init__(self) -> None:
        _require(all(a > 0 for a in self.start_angles_deg), "start_angles_deg must be > 0")
        _positive("search_grid_sp", self.search_grid_sp)
        _non_negative("search_hw", self.search_hw)
        _non_negative("screen_iterations", self.screen_iterations)
        _non_negative("coarse_iterations", self.coarse_iterations)
        _non_negative("fine_iterations", self.fine_iterations)
        _positive("fine_stride", self.fine_stride)
        _positive("lr_rotation_deg", self.lr_rotation_deg)
        _positive("lr_translation_mm", self.lr_translation_mm)


@dataclass(frozen=True)
class AffineStageSettings:
    """The global stage before the deformable one (``method = "none"``: the header alignment).

    ``blockmatch``: MIND-SSC block matching + LTS; ``niftyreg``: ``reg_aladin`` with the
    organisers' settings; ``search``: multi-start rigid optimisation of the MIND similarity.
    One transform is shared by ceT1 and T2 unless ``fusion = "none"``: block matching then
    matches their features jointly; ``reg_aladin`` and the search register the group's primary
    sequence (ceT1 when present, ``stages.transforms.primary_sequence``).
    """

    # "none": the search won the tuning half of the standard set but lost the held-out half
    # (docs/benchmark.md), so it is not the default (configs/search_guarded.toml).
    method: str = "none"
    transform: str = "rigid"  # rigid | affine (search: rigid only)
    blockmatch: BlockMatchSettings = field(default_factory=BlockMatchSettings)
    search: RigidSearchSettings = field(default_factory=RigidSearchSettings)
    aladin: AladinSettings = field(default_factory=AladinSettings)  # rigid_only follows transform

    def __post_init__(self) -> None:
        _one_of("method", self.method, AFFINE_METHODS)
        _one_of("transform", self.transform, TRANSFORMS)
        _require(self.method != "search" or self.transform == "rigid", "method search is rigid only")


# -- deformable stage ----------------------------------------------------------------------


@dataclass(frozen=True)
class LevelSettings:
    grid_sp: int  # working voxels per coarse cell
    disp_hw: int  # search half-width, coarse voxels: +- grid_sp * disp_hw working voxels
    weight: float = 1.0  # weight in MCBO-style fusion (combine = "weighted")

    def __post_init__(self) -> None:
        _positive("grid_sp", self.grid_sp)
        _positive("disp_hw", self.disp_hw)
        _non_negative("weight", self.weight)


@dataclass(frozen=True)
class ConvexSettings:
    # One coarse level (4 mm cells, +-16 mm) measured best on the tuning cases; finer cascaded
    # levels (MCBO's 6/4/2 in 0.5 mm voxels = 3/2/1 mm) fitted speckle (docs/).
    levels: tuple[LevelSettings, ...] = (LevelSettings(grid_sp=4, disp_hw=4, weight=1.0),)
    coefficients: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
    average_iterates: bool = True  # MCBO's weight balancing
    combine: str = "last"  # "last": coarse-to-fine cascade; "weighted": MCBO weighted fusion
    inverse_consistent: bool = False  # also solve moving->fixed, then symmetrise both fields
    inverse_iterations: int = 10
    rigid_projection: bool = False  # MCPO: each level's field projected onto a rigid transform (LTS)
    robust: float = 0.0  # > 0: Geman-McClure cost per cell, scale = robust x mean zero-offset cost
    projection_inlier_fraction: float = 0.5

    def __post_init__(self) -> None:
        _require(bool(self.levels), "levels must not be empty")
        _require(bool(self.coefficients), "coefficients must not be empty")
        _require(all(c >= 0 for c in self.coefficients), "coefficients must be >= 0")
        _one_of("combine", self.combine, COMBINES)
        _non_negative("inverse_iterations", self.inverse_iterations)
        _require(0 < self.projection_inlier_fraction <= 1, "projection_inlier_fraction must be in (0, 1]")
        _non_negative("robust", self.robust)
        if self.combine == "weighted":
            _require(sum(lv.weight for lv in self.levels) > 0, "the level weights must not all be 0")


@dataclass(frozen=True)
class AdamSettings:
    """Adam instance optimisation of a stationary velocity field (:mod:`~remind2reg.inference.deformable.instance`)."""

    grid_sp: int = 4  # working voxels per control point
    feature_pool: int = 2  # features are averaged by this factor for the similarity (speed)
    iterations: int = 50
    learning_rate: float = 0.5  # coarse voxels
    # Adam's eps (loss units per coarse-grid parameter): Adam divides each parameter's step by
    # the root mean square of its gradients plus eps, so with torch's 1e-8 its steps are about
    # the learning rate whatever the gradient's size; an eps of the order of the gradient (about
    # 1e-5 at the start) lets steps shrink with it (docs/benchmark.md, "Morning round").
    eps: float = 1e-8
    regularisation: float = 0.5  # lambda of the diffusion penalty
    smoothing_passes: int = 3  # 3^3 box filters applied to v at each step
    squaring_steps: int = 5
    robust: float = 0.0  # > 0: Geman-McClure per voxel, scale = robust x the mean residual at the start
    # Gaussian sd (pooled feature voxels) applied to the fixed and the moving features before the
    # similarity; 0: none. Trilinear interpolation of rough features lowers their energy at
    # sub-voxel offsets, so an unsmoothed masked SSD prefers half-voxel shifts over the truth
    # (docs/benchmark.md, "the interpolation artefact").
    feature_smoothing: float = 0.0
    # Off-grid sampling: each iteration compares the fixed and the moving features at the
    # voxel centres shifted by one random sub-voxel offset (seeded), so that on average the
    # interpolation smooths both alike and no shift is favoured for its phase; False: at the
    # voxel centres (the fixed one not interpolated).
    jitter_sampling: bool = False
    jitter_seed: int = 0
    # "constant", or "linear": the learning rate falls linearly to 0 over the iterations, so
    # the last iterate settles instead of following the noise of the jittered samples
    schedule: str = "constant"
    # Linear warm-up: step i (from 0) uses lr * min(1, (i + 1) / warmup) (times the schedule's
    # factor); 0: none. Adam's first steps move every parameter by about the full learning rate
    # whatever its gradient (its second-moment estimate is still a single sample), which can
    # throw the field out of the basin of the truth (docs/benchmark.md, "Morning round").
    warmup: int = 0

    def __post_init__(self) -> None:
        _non_negative("robust", self.robust)
        _non_negative("feature_smoothing", self.feature_smoothing)
        _one_of("schedule", self.schedule, ("constant", "linear"))
        _positive("grid_sp", self.grid_sp)
        _positive("feature_pool", self.feature_pool)
        _non_negative("iterations", self.iterations)
        _non_negative("warmup", self.warmup)
        _positive("learning_rate", self.learning_rate)
        _positive("eps", self.eps)
        _non_negative("regularisation", self.regularisation)
        _non_negative("smoothing_passes", self.smoothing_passes)
        _non_negative("squaring_steps", self.squaring_steps)


@dataclass(frozen=True)
class ShrinkSettings:
    """The deformable field shrunk toward its rigid part (:mod:`~remind2reg.inference.stages.deformable`).

    ``d' = r + residual_weight * (d - r)``, where ``r`` is the field of the least-trimmed-squares
    rigid fit of ``d`` inside the sector (best ``inlier_fraction`` of the voxels, as MCPO's
    projection): 1 keeps the field as estimated, 0 keeps its rigid part only. The non-rigid
    part is where a field started at the truth wanders (docs/benchmark.md section 4).
    """

    residual_weight: float = 1.0
    inlier_fraction: float = 0.5

    def __post_init__(self) -> None:
        _require(
            0.0 <= self.residual_weight <= 1.0,
            f"residual_weight must be in [0, 1]; got {self.residual_weight!r}",
        )
        _require(
            0.0 < self.inlier_fraction <= 1.0,
            f"inlier_fraction must be in (0, 1]; got {self.inlier_fraction!r}",
        )


# -- guard -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuardSettings:
    """The decision that keeps the input alignment (or the global stage alone) when the evidence
    for more is weak (:mod:`~remind2reg.inference.stages.guard`).

    The candidates, simplest first: the input alignment, the global transform alone (when a
    global stage ran), the whole result. A candidate replaces the simpler one chosen so far
    only when it raises ``criterion`` (measured on the MR as given, inside the sector; never
    the similarity the optimisers minimised) by more than ``min_gain`` and by more than
    ``relative_margin`` times the pair's jitter (:func:`~remind2reg.inference.stages.guard.jitter`).
    """

    enabled: bool = True
    criterion: str = "nmi"  # nmi (normalised mutual information) | lc2 (local regression, Wein et al.)
    # NMI gain a candidate needs over the simpler one. 0.01 was calibrated on the tuning half
    # (benchmarks/guard_calibration.py) and held on the held-out half, but refuses every case
    # of MNI-template data (the container test, the demo): an absolute NMI margin does not carry
    # over between image contents, so it is an option (configs/guard_margin.toml), not the
    # default (docs/benchmark.md section 3).
    min_gain: float = 0.0
    # Relative margin k: a candidate must also raise the criterion by more than k times the
    # pair's jitter (the mean change of the criterion when the input alignment is shifted by
    # jitter_voxels along each axis); 0 turns it off (configs/guard_plain.toml). Chosen on the
    # tuning half (benchmarks/guard_calibration.py; docs/benchmark.md section 3): k = 1-5 make
    # the same decisions there, 2 is kept from the first calibration (at each candidate's own
    # field, where k = 1-3 tied); it keeps nearly aligned results that the deformable stage would
    # move away, and unlike an absolute margin it refuses no case of MNI-template data.
    relative_margin: float = 2.0
    jitter_voxels: float = 1.0
    lc2_radius: int = 3  # LC2 patches of (2r+1)^3 working voxels

    def __post_init__(self) -> None:
        _one_of("criterion", self.criterion, GUARD_CRITERIA)
        _non_negative("min_gain", self.min_gain)
        _non_negative("relative_margin", self.relative_margin)
        _positive("jitter_voxels", self.jitter_voxels)
        _positive("lc2_radius", self.lc2_radius)


# -- learned refinement --------------------------------------------------------------------


@dataclass(frozen=True)
class NetConfig:
    """Architecture of the refinement network (stored in every weight file).

    ``encoder`` channels per level: level 0 at full resolution, level ``l`` at ``1/2^l``.
    The decoder goes back up to half resolution, where the velocity is predicted.
    """

    encoder: tuple[int, ...] = (16, 32, 32, 32, 32)
    decoder: tuple[int, ...] = (32, 32, 32)  # channels after each up-step (1/8, 1/4, 1/2 for 5 levels)
    final: int = 16  # extra conv at half resolution before the velocity head
    squaring_steps: int = 6

    def __post_init__(self) -> None:
        if len(self.decoder) != len(self.encoder) - 2:
            raise ValueError("decoder needs len(encoder) - 2 levels (it stops at half resolution)")

    @classmethod
    def from_dict(cls, data: dict) -> NetConfig:
        return cls(
            encoder=tuple(int(c) for c in data["encoder"]),
            decoder=tuple(int(c) for c in data["decoder"]),
            final=int(data["final"]),
            squaring_steps=int(data["squaring_steps"]),
        )


SMALL_CPU_NET = NetConfig((12, 24, 24, 24, 24), (24, 24, 24), 12)  # about 0.27 M parameters
#: Network presets of ``remind2reg train-refiner --net`` (base: about 0.5 M parameters, for GPUs).
NETS: dict[str, NetConfig] = {"small": SMALL_CPU_NET, "base": NetConfig()}


@dataclass(frozen=True)
class RefineSettings:
    """The learned refinement stage (all lengths in working voxels).

    ``enabled = False`` (the default until the benchmark shows a TRE gain) leaves the field
    unchanged. ``weights = None`` uses :func:`remind2reg.inference.paths.default_weights_path`.
    """

    enabled: bool = False
    weights: str | None = None
    tto_steps: int = 0  # test-time optimisation steps per pair (0: the network alone)
    tto_target: str = "velocity"  # "velocity": the predicted SVF; "network": the weights
    tto_lr: float = 0.05  # Adam step: half-grid voxels for "velocity"; use about 1e-4 for "network"
    similarity: str = "mind"  # "mind" | "ncc" (TTO only)
    smoothness: float = 1.0  # weight of the diffusion penalty of the residual (TTO only)
    divergence: float = 0.1  # alpha of alpha * mean(div(r)^2) (TTO only)
    ncc_radius: int = 3  # local NCC window half-size
    mind_radius: int = 1
    mind_dilation: int = 2
    # A residual whose mean length inside the sector exceeds this (working voxels) is rejected:
    # the input field is returned (a refinement is a small correction, not a new registration).
    max_mean_residual: float = 4.0

    def __post_init__(self) -> None:
        _one_of("similarity", self.similarity, SIMILARITIES)
        _one_of("tto_target", self.tto_target, TTO_TARGETS)
        _non_negative("tto_steps", self.tto_steps)
        _positive("tto_lr", self.tto_lr)
        _non_negative("smoothness", self.smoothness)
        _non_negative("divergence", self.divergence)
        _positive("ncc_radius", self.ncc_radius)
        _positive("max_mean_residual", self.max_mean_residual)
