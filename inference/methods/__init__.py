"""Registration methods by name (``remind2reg register --method``): :func:`make_method`.

A method maps the images of one case to challenge-format fields
(:class:`~remind2reg.inference.methods.base.MethodResult`). The names are
:data:`remind2reg.inference.settings.METHODS`.
"""

from __future__ import annotations

from dataclasses import replace

from remind2reg.inference.config import RegistrationConfig
from remind2reg.inference.methods.base import Method
from remind2reg.inference.settings import METHODS


def make_method(name: str, config: RegistrationConfig | None = None, device: str = "cpu") -> Method:
    """The registration method called ``name`` (one of :data:`~remind2reg.inference.settings.METHODS`)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    if name == "identity":
        from remind2reg.inference.methods.identity import IdentityMethod

        return IdentityMethod()
    if name in ("niftyreg-rigid", "niftyreg-affine"):
        from remind2reg.inference.methods.niftyreg import NiftyRegMethod

        aladin = (config or RegistrationConfig()).affine.aladin
        return NiftyRegMethod(name == "niftyreg-rigid", replace(aladin, rigid_only=name == "niftyreg-rigid"))
    from remind2reg.inference.methods.convex_adam import ConvexAdamMethod

    base = config or RegistrationConfig()
    if name in ("blockmatch-rigid", "blockmatch-affine"):
        # The global stage of the pipeline alone: MIND block matching + LTS, no deformable stage.
        affine = replace(base.affine, method="blockmatch", transform=name.split("-")[1])
        method = ConvexAdamMethod(replace(base, affine=affine, deformable=False), device)
        method.name = name
        return method
    return ConvexAdamMethod(base, device)
