"""What a registration method is: the images of one case in, one displacement field per group out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from remind2reg.inference.errors import UsageError
from remind2reg.inference.io.displacement import SharedField
from remind2reg.inference.io.nifti import Image


@dataclass
class MethodResult:
    """Challenge-format fields ``(I, J, K, 3)``, each shared by one or more moving sequences,
    the seconds per stage, and notes (global matrices, guard NMI, fallbacks, ...)."""

    shared: tuple[SharedField, ...]
    stages: dict[str, float] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)

    @classmethod
    def per_sequence(cls, fields: Mapping[str, NDArray[np.float32]], **kwargs) -> MethodResult:
        """One field per moving sequence (nothing shared)."""
        return cls(tuple(SharedField((mod,), f) for mod, f in fields.items()), **kwargs)

    @property
    def fields(self) -> dict[str, NDArray[np.float32]]:
        """The field of every moving sequence (sequences of one group map to the same array)."""
        return {mod: s.field for s in self.shared for mod in s.modalities}


class Method(Protocol):
    """Registers the moving images of one case (e.g. {"0001": ceT1, "0002": T2}) to the US.

    ``init_fixed2moving``: an initial transform (4x4, world mm,
    ``moving_world = init_fixed2moving @ fixed_world``) to start from, or None; a method that
    cannot start from one raises :class:`~remind2reg.inference.errors.UsageError` when given one.
    """

    name: str

    def __call__(
        self, fixed: Image, moving: dict[str, Image], init_fixed2moving: NDArray[np.float64] | None = None
    ) -> MethodResult: ...


def refuse_init(name: str, init_fixed2moving: NDArray[np.float64] | None) -> None:
    """:class:`UsageError` when a method that cannot start from an initial transform is given one."""
    if init_fixed2moving is not None:
        raise UsageError(
            f"method {name!r} cannot start from an initial transform; use convex-adam or niftyreg-*"
        )
