"""Virtual CUDA: run the CUDA code path on the CPU and catch tensors left on the wrong device.

On a real GPU an op that combines a CUDA tensor with a CPU tensor raises "Expected all tensors
to be on the same device", and ``.numpy()`` of a CUDA tensor raises too. Without a GPU (CI)
that code path never runs. Inside :class:`VirtualCuda` (a ``TorchFunctionMode``) it does:

* **Placement.** A ``device="cuda"`` argument of any torch function (``torch.zeros(...,
  device=d)``, ``torch.as_tensor``, ``x.new_zeros``, ...), ``x.to("cuda")``/``x.to(other)`` and
  ``x.cuda()`` create the tensor on the CPU and mark its *storage* as virtual CUDA. The mark
  follows the storage, so views, ``detach()``, ``nn.Parameter(x)`` and ``param.data = x``
  (``Module.to``) keep it; the result of every other op is marked when one of its tensor
  inputs is. ``x.cpu()``/``x.to("cpu")`` of a marked tensor return an unmarked copy (a real
  transfer copies: the copy does not alias the original).
* **Queries.** ``x.device`` of a marked tensor is ``cuda:0``, ``x.is_cuda`` is True,
  ``x.is_cpu`` False and ``x.get_device()`` 0, so code that places new tensors with
  ``device=x.device`` or branches on ``device.type == "cuda"`` takes its GPU branch (e.g.
  float16 feature storage).
* **Checks** (raising :class:`DevicePlacementError`, which names the op, the devices and shapes
  of its tensors and the innermost calling line outside torch):

  - an op whose tensor arguments are on both virtual CUDA and the CPU. A genuine CPU 0-dim
    tensor is exempt (torch accepts CPU scalars in CUDA ops); transfers (``to``, ``cpu``,
    ``cuda``, ``copy_``, ``.data =``) are exempt; indexing accepts CPU index tensors and, with
    basic indexing only, a value on another device (``x[a:b] = y`` copies, as torch does);
  - ``.numpy()`` / ``np.asarray(x)`` of a marked tensor.

What it cannot see:

* kernels or features that exist only on CUDA, or behave differently there (a CUDA-only op,
  deterministic-algorithm errors of CUDA kernels). CUDA-only calls (``torch.cuda.*``: memory
  statistics, ``synchronize``, streams; ``pin_memory()``) are not emulated and fail here, as
  does a device passed positionally to a factory (only ``device=`` and the arguments of
  ``Tensor.to`` are read). ``torch.cuda.is_available()`` stays False (torch itself consults it),
  so code that picks its device by asking must be given ``"cuda"``. There is one GPU: every
  CUDA device is ``cuda:0``;
* numerics: the virtual run computes on the CPU (float16 storage does run; an op that has no
  float16 CPU kernel would fail here although it would run on a GPU), and ``torch.autocast``
  with ``device_type="cuda"`` is disabled by torch here (with a warning), so autocast regions
  run in float32 instead of bfloat16;
* memory (out-of-memory), speed, and asynchronous errors;
* tensors made by C++ and handed to Python without a torch function (the gradients a custom
  ``autograd.Function.backward`` receives, the outputs of ``torch.autograd.grad``) are unmarked:
  they look like CPU tensors, a false alarm if mixed with marked ones (``x.grad`` is read
  through a torch function and is marked). The package uses none of them;
* ops inside one torch function (only its top-level call is checked: inside, everything is
  genuinely on the CPU), and device rules stricter than "one device, CPU scalars allowed"
  (a few CUDA ops reject CPU scalars too).

Run the code under test in a subprocess (``python -m tests.virtual_cuda``, see :func:`main`):
the package caches tensors and models keyed by device, which would otherwise outlive the run.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode, resolve_name
from torch.utils._pytree import tree_leaves

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")
_MARK = "_virtual_cuda"  # attribute set on the (Python object of the) storage of a virtual-CUDA tensor
_TORCH_DIR = str(Path(torch.__file__).parent)

# Getters of tensor properties that must tell the virtual device (each is a torch function).
_DEVICE = torch.Tensor.device.__get__
_IS_CUDA = torch.Tensor.is_cuda.__get__
_IS_CPU = torch.Tensor.is_cpu.__get__
_SET_DATA = torch.Tensor.data.__set__
# Functions that move or rebind data across devices, which torch allows (not checked).
_TRANSFERS = (torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.cuda)
_REBINDS = (torch.Tensor.copy_, _SET_DATA, torch._has_compatible_shallow_copy_type)
# Factories whose first argument is data: a list of tensors is read, not combined.
_DATA_FACTORIES = (torch.tensor, torch.as_tensor, torch.asarray)
_TO_NUMPY = (torch.Tensor.numpy, torch.Tensor.__array__)


class DevicePlacementError(RuntimeError):
    """An operation that would raise on a real GPU: tensors on two devices, or a CUDA tensor to numpy."""


def is_virtual_cuda(t: torch.Tensor) -> bool:
    """True when ``t``'s storage was created as virtual CUDA (by a :class:`VirtualCuda` run)."""
    return getattr(t.untyped_storage(), _MARK, False)


def _mark(t: torch.Tensor) -> None:
    setattr(t.untyped_storage(), _MARK, True)


def _device(t: torch.Tensor) -> torch.device:
    """The device ``t`` would be on with a GPU."""
    return CUDA if is_virtual_cuda(t) else t.device


def _is_cuda(device: Any) -> bool:
    """True for a CUDA device argument (``"cuda"``, ``"cuda:1"``, ``torch.device("cuda")``, an index)."""
    return device is not None and torch.device(device).type == "cuda"


def _is_device(value: Any) -> bool:
    """A positional device argument of ``Tensor.to``: a string (``"cuda"``, ``"cpu:0"``) or ``torch.device``."""
    if isinstance(value, torch.device):
        return True
    if not isinstance(value, str):
        return False
    try:
        torch.device(value)
    except RuntimeError:
        return False
    return True


def _caller() -> str:
    """The innermost frame outside torch and this module, as ``file:line in function``."""
    for frame in reversed(traceback.extract_stack()):
        if not frame.filename.startswith(_TORCH_DIR) and frame.filename != __file__:
            return f"{frame.filename}:{frame.lineno} in {frame.name}"
    return "?"


def _describe(tensors: Iterable[torch.Tensor]) -> str:
    return ", ".join(f"{_device(t)} {tuple(t.shape)}" for t in tensors)


def _check_one_device(func: Callable, tensors: Sequence[torch.Tensor]) -> None:
    """Raise unless ``tensors`` are on one (virtual) device, genuine CPU 0-dim tensors aside."""
    counted = [t for t in tensors if is_virtual_cuda(t) or t.dim() > 0]
    if len({_device(t).type for t in counted}) > 1:
        raise DevicePlacementError(
            f"virtual CUDA: {resolve_name(func) or func} mixes devices ({_describe(counted)}) at {_caller()}; "
            "on a GPU this raises 'Expected all tensors to be on the same device'"
        )


def _check_indexing(func: Callable, args: tuple) -> None:
    """``x[index]`` / ``x[index] = value``: index tensors on the CPU or on ``x``'s device; with
    advanced (tensor) indexing a value tensor on ``x``'s device (or a CPU 0-dim tensor)."""
    x, index = args[0], args[1]
    indices = [t for t in tree_leaves(index) if isinstance(t, torch.Tensor)]
    wrong = [t for t in indices if _device(t).type not in ("cpu", _device(x).type)]
    if wrong:
        raise DevicePlacementError(
            f"virtual CUDA: {resolve_name(func)} of a {_device(x)} tensor with indices on "
            f"{_describe(wrong)} at {_caller()}; indices must be on the CPU or on the tensor's device"
        )
    if len(args) > 2 and indices and isinstance(args[2], torch.Tensor):
        _check_one_device(func, [x, args[2]])


def _transfer(func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``x.to(...)``, ``x.cpu()``, ``x.cuda()``: run on the CPU, mark the result by its target
    device, and copy when the (virtual) device changes but torch returned ``x`` itself."""
    x, rest = args[0], list(args[1:])
    if func is torch.Tensor.cuda:
        target, out = CUDA, x
    elif func is torch.Tensor.cpu:
        target, out = CPU, func(*args, **kwargs)
    else:
        target = _device(x)
        if rest and isinstance(rest[0], torch.Tensor):  # x.to(other): other's device and dtype
            target = _device(rest[0])
        elif rest and _is_device(rest[0]):
            target, rest[0] = torch.device(rest[0]), CPU if _is_cuda(rest[0]) else rest[0]
        if kwargs.get("device") is not None:
            target = torch.device(kwargs["device"])
            kwargs = {**kwargs, "device": CPU if target.type == "cuda" else kwargs["device"]}
        out = func(x, *rest, **kwargs)
    if _device(x).type != target.type and out.untyped_storage()._cdata == x.untyped_storage()._cdata:
        out = out.clone()  # a transfer copies; the copy must not share x's mark
    if target.type == "cuda":
        _mark(out)
    return out


class VirtualCuda(TorchFunctionMode):
    """Within this mode, CUDA tensors live on the CPU, marked; mixing them with CPU tensors raises
    :class:`DevicePlacementError` (see the module docstring for what is and is not checked).
    ``cuda_results`` counts the results it marked: a run that never reached the CUDA path has 0."""

    def __init__(self) -> None:
        super().__init__()
        self.cuda_results = 0

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None):
        kwargs = kwargs or {}
        if func in _TO_NUMPY and is_virtual_cuda(args[0]):
            raise DevicePlacementError(
                f"virtual CUDA: {resolve_name(func)} of a cuda:0 tensor {tuple(args[0].shape)} at {_caller()}; "
                "on a GPU this raises 'can't convert cuda:0 device type tensor to numpy' (call .cpu() first)"
            )
        if func == _DEVICE:
            return _device(args[0])
        if func == _IS_CUDA:
            return _device(args[0]).type == "cuda"
        if func == _IS_CPU:
            return _device(args[0]).type == "cpu"
        if func is torch.Tensor.get_device:
            return 0 if is_virtual_cuda(args[0]) else func(*args, **kwargs)
        if func in _TRANSFERS:
            moved = _transfer(func, args, kwargs)
            self.cuda_results += is_virtual_cuda(moved)
            return moved
        if func in _REBINDS:
            return func(*args, **kwargs)
        device = kwargs.get("device")
        if device is not None:  # a factory (or *_like) placing its result explicitly
            kwargs = {**kwargs, "device": CPU if _is_cuda(device) else device}
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__):
            _check_indexing(func, args)
            inputs = [args[0]]
        elif func in _DATA_FACTORIES:
            inputs = [args[0]] if args and isinstance(args[0], torch.Tensor) else []
        else:
            inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            _check_one_device(func, inputs)
        out = func(*args, **kwargs)
        on_cuda = _is_cuda(device) if device is not None else any(is_virtual_cuda(t) for t in inputs)
        if on_cuda:
            self.cuda_results += 1
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    _mark(t)
        return out


# ------------------------------------------------------------------------------ subprocess runner


def run_jobs(jobs: Sequence[tuple[str, Callable[[], object]]]) -> dict[str, dict[str, object]]:
    """Run each ``(name, job)`` under :class:`VirtualCuda`; by name: ``{"ok", "error",
    "message", "cuda_results", "seconds"}`` (``error`` the exception's class name, "" when it
    passed; ``message`` its text and the last frames of its traceback)."""
    results: dict[str, dict[str, object]] = {}
    for name, job in jobs:
        t0 = time.perf_counter()
        mode = VirtualCuda()
        try:
            with mode:
                job()
            outcome: dict[str, object] = {"ok": True, "error": "", "message": ""}
        except Exception as exc:  # reported to the test, which asserts on it
            tb = "".join(traceback.format_exception(exc, limit=-6))
            outcome = {"ok": False, "error": type(exc).__name__, "message": f"{exc}\n{tb}"}
        outcome["cuda_results"] = mode.cuda_results
        outcome["seconds"] = round(time.perf_counter() - t0, 2)
        results[name] = outcome
    return results


def main(argv: Sequence[str]) -> int:
    """``python -m tests.virtual_cuda MODULE:FUNCTION RESULTS.json``: import ``MODULE``, call
    ``FUNCTION()`` for the list of ``(name, job)`` to run, run them with :func:`run_jobs` on one
    CPU thread and write the outcomes to ``RESULTS.json``."""
    spec, results_path = argv
    module, _, function = spec.partition(":")
    torch.set_num_threads(1)
    jobs = getattr(importlib.import_module(module), function)()
    Path(results_path).write_text(json.dumps(run_jobs(jobs), indent=1))
    return 0


if __name__ == "__main__":
    # Run the copy imported under its package name: the one that the jobs' modules import.
    from tests.virtual_cuda import main as _main

    raise SystemExit(_main(sys.argv[1:]))
