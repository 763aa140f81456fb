"""Settings of the iUS renderer (:func:`synthesis.ultrasound.render_ultrasound`).

Kept apart from the renderer (no numpy or scipy here) so that the family registry
(:mod:`synthesis.families`) and the command line can build them cheaply.

Every field's default reproduces the original (``legacy``) renderer; the realism features
added later (thin reflecting sheets, a monotone T1 echo map, the partial-volume sector edge,
a patchy cavity rim, echogenic cavity content) are off by default and switched on by the
families. Per-label tuples are indexed by the label codes of :mod:`synthesis.labels`.
"""

from __future__ import annotations

from dataclasses import dataclass

from remind2reg.synthesis import labels as L

N_LABELS = 8


def label_table(values: dict[int, float]) -> tuple[float, ...]:
    """Per-label tuple indexed by label code (every code of :mod:`synthesis.labels` needed)."""
    return tuple(float(values[c]) for c in range(N_LABELS))


def with_label(table: tuple[float, ...], label: int, value: float) -> tuple[float, ...]:
    """``table`` with the entry of ``label`` replaced by ``value``."""
    return tuple(float(value) if c == label else v for c, v in enumerate(table))


def _check_range(name: str, lo_hi: tuple[float, float], lo: float, hi: float) -> None:
    a, b = lo_hi
    if not (lo <= a <= b <= hi):
        raise ValueError(f"{name} must satisfy {lo} <= low <= high <= {hi}, got {lo_hi}")


@dataclass(frozen=True)
class UltrasoundParams:
    """Every rendering constant (amplitudes relative to white matter, lengths in mm).

    Echogenicity is the mean envelope amplitude relative to white matter; each case draws a
    multiplicative log-normal factor per label with sd ``echo_spread``. Pairs ``(lo, hi)`` are
    ranges drawn uniformly once per case. Validated on construction.
    """

    echo: tuple[float, ...] = label_table(
        {L.BACKGROUND: 0.25, L.CSF: 0.10, L.GREY_MATTER: 0.90, L.WHITE_MATTER: 1.0,
         L.VENTRICLE: 0.06, L.TUMOUR: 1.9, L.CAVITY: 0.05, L.FALX: 3.0}
    )  # fmt: skip
    echo_spread: tuple[float, ...] = label_table(
        {L.BACKGROUND: 0.4, L.CSF: 0.3, L.GREY_MATTER: 0.08, L.WHITE_MATTER: 0.08,
         L.VENTRICLE: 0.3, L.TUMOUR: 0.25, L.CAVITY: 0.4, L.FALX: 0.2}
    )  # fmt: skip
    # thin (sulcal) CSF: amplitude where CSF is thin (legacy: a bright band over the whole sulcus)
    sulcus_echo: float = 3.0
    sulcus_thickness_mm: float = 1.5  # Gaussian scale deciding "thin" vs "thick" CSF
    # acoustic impedance proxy (only differences matter) -> specular interfaces
    impedance: tuple[float, ...] = label_table(
        {L.BACKGROUND: 1.0, L.CSF: 1.0, L.GREY_MATTER: 1.25, L.WHITE_MATTER: 1.3,
         L.VENTRICLE: 1.0, L.TUMOUR: 1.45, L.CAVITY: 1.0, L.FALX: 2.2}
    )  # fmt: skip
    interface_sigma_mm: float = 0.5
    interface_gain: float = 9.0  # amplitude per unit of |grad Z . beam|^2/|grad Z| (1/mm)
    shadow_strength: float = 1.0  # transmission exp(-s * integral of excess reflectivity)
    shadow_threshold: float = 0.2  # 1/mm; weaker (tissue/fluid) interfaces cast no shadow
    # attenuation (dB/cm/MHz, one way) per label and the centre frequency
    attenuation: tuple[float, ...] = label_table(
        {L.BACKGROUND: 0.2, L.CSF: 0.01, L.GREY_MATTER: 0.55, L.WHITE_MATTER: 0.6,
         L.VENTRICLE: 0.01, L.TUMOUR: 0.7, L.CAVITY: 0.01, L.FALX: 1.5}
    )  # fmt: skip
    frequency_mhz: float = 5.0
    tgc_compensation: tuple[float, float] = (0.4, 0.9)  # fraction of brain attenuation undone
    tgc_reference_db: float = 0.6  # dB/cm/MHz the TGC assumes
    near_field_gain: float = 0.8  # extra amplitude at the top of the sector (contact line)
    near_field_mm: float = 2.0
    # cavity: bright rim (blood, haemostatic material) just outside it
    rim_mm: float = 1.0
    rim_echo: float = 1.8
    rim_coverage: float = 1.0  # share of the rim shell that is bright (patchy below 1)
    cavity_texture: float = 0.0  # log-amplitude sd of cavity content (clot, debris); 0: none
    cavity_texture_mm: float = 1.5  # scale of that heterogeneity
    # weak T1 texture: amplitude *= exp(t1_weight * highpass(T1)/std)
    t1_weight: float = 0.08
    t1_highpass_mm: float = 2.0
    # monotone T1 echo map: amplitude = (1 - mix) * label echo + mix * (T1 / T1_wm)^power
    t1_echo_mix: float = 0.0
    t1_echo_power: float = 2.0
    # thin reflecting sheets at the centre of sulci and the falx (valleys of the T1)
    line_echo: float = 0.0  # amplitude of a sheet (0: off, legacy)
    line_sigma_mm: float = 0.25  # Gaussian sd of the sheet profile before the PSF
    line_scales_mm: tuple[float, ...] = (1.0, 2.0)  # Hessian scales that find the valleys
    line_threshold: float = 0.05  # least valley depth (scale-normalised, x the WM T1)
    line_specular: float = 0.5  # share of the sheet echo that needs the beam normal to it
    # short thin bright segments in the parenchyma (vessel walls): count per ml of tissue,
    # length range (mm) and amplitude; specular across the vessel (beam normal to its axis)
    vessel_density_per_ml: float = 0.0  # 0: off (legacy)
    vessel_length_mm: tuple[float, float] = (2.0, 8.0)
    vessel_echo: float = 6.0
    # slow tissue heterogeneity: amplitude *= exp(hetero_amp * smooth noise)
    hetero_amp: float = 0.15
    hetero_mm: float = 3.0
    # speckle: Gaussian PSF sd (mm) along the beam and across it
    psf_axial_mm: float = 0.3
    psf_lateral_mm: float = 0.5
    psf_elevational_mm: float = 0.6
    psf_scale: tuple[float, float] = (0.7, 1.25)  # per-case factor on the three PSF sds
    compounding: int = 1  # independent speckle looks averaged (freehand sweeps overlap)
    beam_step_mm: float = 0.3
    beam_arc_voxels: float = 0.7  # angular step of the beam grid: arc at the far cap, voxels
    # output mapping: out = median * (img / median(img))^gamma, clipped
    gamma: tuple[float, float] = (0.4, 0.7)
    out_median: tuple[float, float] = (18.0, 36.0)
    out_max: float = 200.0
    # display saturation: out = S tanh(out / S), S = ratio x the output median, ratio drawn
    # per case (None: a hard clip at out_max only, legacy)
    saturation_ratio: tuple[float, float] | None = None
    # the sector edge covers a voxel partly (resampling of the scan-converted image): the
    # outermost voxel layer is scaled by the share of it inside the sector
    edge_partial_volume: bool = False

    def __post_init__(self) -> None:
        for name in ("echo", "echo_spread", "impedance", "attenuation"):
            table = getattr(self, name)
            if len(table) != N_LABELS or min(table) < 0:
                raise ValueError(f"{name} needs {N_LABELS} non-negative entries, got {table}")
        _check_range("tgc_compensation", self.tgc_compensation, 0.0, 2.0)
        _check_range("psf_scale", self.psf_scale, 0.05, 10.0)
        _check_range("gamma", self.gamma, 0.05, 2.0)
        _check_range("out_median", self.out_median, 1e-3, self.out_max)
        _check_range("vessel_length_mm", self.vessel_length_mm, 0.1, 100.0)
        if self.saturation_ratio is not None:
            _check_range("saturation_ratio", self.saturation_ratio, 1.0, 100.0)
        for name in ("t1_echo_mix", "line_specular", "rim_coverage"):
            _check_range(name, (getattr(self, name),) * 2, 0.0, 1.0)
        positive = ("psf_axial_mm", "psf_lateral_mm", "psf_elevational_mm", "beam_step_mm", "frequency_mhz")
        positive += ("beam_arc_voxels", "line_sigma_mm", "near_field_mm", "hetero_mm", "out_max")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        nonneg = ("line_echo", "sulcus_echo", "interface_gain", "shadow_strength", "near_field_gain")
        nonneg += ("rim_mm", "rim_echo", "cavity_texture", "hetero_amp", "t1_weight", "line_threshold")
        nonneg += ("vessel_density_per_ml", "vessel_echo")
        for name in nonneg:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.compounding < 1 or not self.line_scales_mm or min(self.line_scales_mm) <= 0:
            raise ValueError("compounding must be >= 1 and line_scales_mm positive")


__all__ = ["N_LABELS", "UltrasoundParams", "label_table", "with_label"]
