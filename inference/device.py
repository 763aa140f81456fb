"""The compute device a request names: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda``."""

from __future__ import annotations

import logging

from remind2reg.inference.errors import Remind2RegError
from remind2reg.inference.settings import DEVICES

log = logging.getLogger(__name__)


def resolve_device(requested: str) -> str:
    """``"cpu"`` or ``"cuda"``; ``auto`` falls back to the CPU with a warning, ``cuda`` without
    a CUDA device is an error."""
    if requested not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {requested!r}")
    if requested == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise Remind2RegError("--device cuda was requested but no CUDA device is available")
    log.warning("No CUDA device available: running on the CPU")
    return "cpu"


def set_deterministic_algorithms(mode: bool) -> None:
    """Make torch's operations deterministic (``mode=True``) or not.

    The same switch as ``torch.use_deterministic_algorithms(mode)``, without that function's
    side job of configuring the Inductor compiler, which imports ``torch._inductor`` and
    ``torch._dynamo`` (about 2 s of a 15 s pair on 2 cores) for ``torch.compile``, which this
    project does not use. Where torch no longer has the inner switch, the public function is
    called instead.
    """
    import torch

    inner = getattr(torch._C, "_set_deterministic_algorithms", None)
    if inner is None:
        torch.use_deterministic_algorithms(mode)
    else:
        inner(mode)
