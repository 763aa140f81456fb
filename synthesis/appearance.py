"""Per-case renderer settings of a family: the drawn appearance variants.

:func:`case_ultrasound_params` turns a family's :class:`~synthesis.families.FamilySettings`
into the :class:`~synthesis.ultrasound_params.UltrasoundParams` of one case: the near-field
gain and, with a cavity, its look (anechoic saline or echogenic blood/clot; a patchy bright
rim or none; posterior enhancement or none). The legacy family draws nothing, so that its
cases keep the random sequence of the original generator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from remind2reg.synthesis import labels as L
from remind2reg.synthesis.families import CavitySettings, FamilySettings
from remind2reg.synthesis.ultrasound_params import UltrasoundParams, with_label


@dataclass(frozen=True)
class CavityLook:
    """The drawn look of one cavity (written to the case record)."""

    echogenic: bool  # blood/clot/debris instead of anechoic saline
    rim: bool  # bright patchy rim (blood, haemostatic material)
    enhancement: bool  # posterior acoustic enhancement (fluid attenuates less than brain)
    echo: float
    texture: float
    attenuation_db: float
    rim_echo: float
    rim_mm: float
    rim_coverage: float


def draw_cavity_look(s: CavitySettings, rng: np.random.Generator) -> CavityLook:
    """One cavity look from the probabilities and ranges of ``s``."""
    echogenic = bool(rng.random() < s.echogenic_probability)
    rim = bool(rng.random() < s.rim_probability)
    enhancement = bool(rng.random() < s.enhancement_probability)
    echo = float(rng.uniform(*(s.echogenic_echo if echogenic else s.anechoic_echo)))
    texture = float(rng.uniform(*s.echogenic_texture)) if echogenic else 0.0
    if enhancement:
        attenuation = s.blood_attenuation if echogenic else s.saline_attenuation
    else:
        attenuation = float(rng.uniform(*s.coupling_attenuation))
    return CavityLook(
        echogenic=echogenic,
        rim=rim,
        enhancement=enhancement,
        echo=echo,
        texture=texture,
        attenuation_db=float(attenuation),
        rim_echo=float(rng.uniform(*s.rim_echo)) if rim else 0.0,
        rim_mm=float(rng.uniform(*s.rim_mm)),
        rim_coverage=float(rng.uniform(*s.rim_coverage)),
    )


def apply_cavity_look(params: UltrasoundParams, look: CavityLook) -> UltrasoundParams:
    """``params`` with the cavity's echo, texture, attenuation, impedance and rim of ``look``.

    Echogenic content (clot) sits closer to brain in impedance (1.15 against 1.0 for saline),
    so its wall reflects less.
    """
    return replace(
        params,
        echo=with_label(params.echo, L.CAVITY, look.echo),
        attenuation=with_label(params.attenuation, L.CAVITY, look.attenuation_db),
        impedance=with_label(params.impedance, L.CAVITY, 1.15 if look.echogenic else 1.0),
        cavity_texture=look.texture,
        rim_echo=look.rim_echo,
        rim_mm=look.rim_mm,
        rim_coverage=look.rim_coverage,
    )


def case_ultrasound_params(
    family: FamilySettings, has_cavity: bool, rng: np.random.Generator
) -> tuple[UltrasoundParams, dict]:
    """(renderer settings of one case, what was drawn as a json-able dict)."""
    params, drawn = family.ultrasound, {}
    if family.near_field_gain is not None:
        gain = float(rng.uniform(*family.near_field_gain))
        params, drawn["near_field_gain"] = replace(params, near_field_gain=gain), gain
    if has_cavity and family.cavity is not None and family.cavity.irregular:
        look = draw_cavity_look(family.cavity, rng)
        params, drawn["cavity_look"] = apply_cavity_look(params, look), asdict(look)
    return params, drawn


__all__ = ["CavityLook", "apply_cavity_look", "case_ultrasound_params", "draw_cavity_look"]
