"""Tissue label codes shared by the anatomy model and the ultrasound renderer.

A label map is a ``uint8`` array on a voxel grid; each voxel holds one code below.
"""

from __future__ import annotations

BACKGROUND = 0  # outside the brain (skull, air, scalp after skull stripping)
CSF = 1  # sulcal and extra-axial cerebrospinal fluid
GREY_MATTER = 2
WHITE_MATTER = 3
VENTRICLE = 4  # ventricular CSF (choroid plexus is not modelled)
TUMOUR = 5  # residual tumour tissue (low-grade glioma is hyperechoic in iUS)
CAVITY = 6  # resection cavity, filled with saline
FALX = 7  # falx cerebri / dura: a thin fibrous membrane, hyperechoic in iUS

NAMES: dict[int, str] = {
    BACKGROUND: "background",
    CSF: "csf",
    GREY_MATTER: "grey_matter",
    WHITE_MATTER: "white_matter",
    VENTRICLE: "ventricle",
    TUMOUR: "tumour",
    CAVITY: "cavity",
    FALX: "falx",
}
