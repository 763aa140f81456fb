"""remind2reg: brain MRI to intra-operative ultrasound registration (Learn2Reg ReMIND2Reg).

Public API (imported on first use, so that ``import remind2reg`` and the command line's
``--help`` stay light): :func:`register`, :func:`evaluate` (:mod:`remind2reg.api`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["PairMetrics", "RegistrationResult", "__version__", "evaluate", "register"]

if TYPE_CHECKING:
    from remind2reg.api import PairMetrics, RegistrationResult, evaluate, register


def __getattr__(name: str) -> Any:
    if name in ("register", "evaluate", "RegistrationResult", "PairMetrics"):
        from remind2reg import api

        return getattr(api, name)
    raise AttributeError(f"module 'remind2reg' has no attribute {name!r}")
