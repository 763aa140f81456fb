"""remind2reg: brain MRI to intra-operative ultrasound registration (Learn2Reg ReMIND2Reg).

Public API (imported on first use, so that ``import remind2reg`` and the command line's
``--help`` stay light): :func:`register`, :func:`evaluate` (:mod:`remind2reg.api`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# Bit-identical reruns need Intel MKL (linked into torch's CPU wheels) to take the same code path
# whatever the memory alignment of its inputs: by default some MKL kernels peel differently for
# differently aligned buffers, so the same case can come out different in the last bits from one
# process to the next (seen once in CI: the CLI's and the API's fields 5e-4 voxel apart), and the
# optimiser amplifies that. "AUTO,STRICT" keeps the fastest instruction set of this CPU and makes
# the result independent of alignment. It gives the same fields as the default here (checked on
# a 256^3 pair, same bytes, about 2 % slower). MKL reads it when torch first calls it, so it is set
# here, before anything of this package imports torch; a value the user set is kept.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"
__all__ = ["PairMetrics", "RegistrationResult", "__version__", "evaluate", "register"]

if TYPE_CHECKING:
    from remind2reg.api import PairMetrics, RegistrationResult, evaluate, register


def __getattr__(name: str) -> Any:
    if name in ("register", "evaluate", "RegistrationResult", "PairMetrics"):
        from remind2reg import api

        return getattr(api, name)
    raise AttributeError(f"module 'remind2reg' has no attribute {name!r}")
