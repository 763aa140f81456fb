"""A small SynthMorph-style 3D U-Net predicting a stationary velocity field (SVF).

Conventions (the same as :mod:`remind2reg.inference.core.fields` and the rest of the code):

* images are ``(N, 1, D, H, W)`` tensors on the working grid (isotropic, about 1 mm);
* a displacement field ``u`` is ``(N, 3, D, H, W)`` in voxels of that grid along the array
  axes, mapping FIXED to MOVING: ``warped(x) = moving(x + u(x))``;
* the network input is ``cat([fixed, moving], 1)``, each normalised by :func:`normalise`;
* the network outputs a velocity ``v`` at HALF resolution (``(N, 3, D/2, H/2, W/2)`` of the
  padded input, in voxels of the half grid, same axis order, fixed -> moving); the
  displacement is ``exp(v)`` by scaling and squaring at half resolution, then resized to the
  full grid (:func:`remind2reg.inference.core.fields.integrate`), which
  aligns the corner voxels and multiplies the vectors once by ``(n - 1) / (n / 2 - 1)`` per
  axis (about 2): that ratio is what "a half-grid voxel" means here, in training and at
  inference alike. Nothing else rescales the vectors.

The U-Net has no normalisation layers and LeakyReLU(0.2) activations, as in SynthMorph
(Hoffmann et al., IEEE TMI 2022). Inputs of any size are padded (replicate) to a multiple of
:attr:`RefinerNet.multiple` and the field is cropped back.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from remind2reg.inference.core.fields import integrate
from remind2reg.inference.errors import InputError
from remind2reg.inference.paths import WEIGHTS_ENV, default_weights_path
from remind2reg.inference.settings import NetConfig

log = logging.getLogger(__name__)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.2))


class RefinerNet(nn.Module):
    """U-Net (no normalisation, LeakyReLU 0.2) -> half-resolution SVF -> displacement.

    :meth:`velocity` returns the half-resolution velocity of padded inputs;
    :meth:`forward` returns the full-resolution displacement ``(N, 3, D, H, W)`` (voxels,
    fixed -> moving) for inputs of any size.
    """

    def __init__(self, config: NetConfig = NetConfig()):
        super().__init__()
        self.config = config
        enc = config.encoder
        self.enc = nn.ModuleList([_conv(2, enc[0])])
        for i in range(1, len(enc)):
            self.enc.append(nn.Sequential(_conv(enc[i - 1], enc[i], stride=2), _conv(enc[i], enc[i])))
        self.dec = nn.ModuleList()
        prev = enc[-1]
        for i, cout in enumerate(config.decoder):
            skip = enc[len(enc) - 2 - i]
            self.dec.append(nn.Sequential(_conv(prev + skip, cout), _conv(cout, cout)))
            prev = cout
        self.final = _conv(prev, config.final)
        self.head = nn.Conv3d(config.final, 3, 3, padding=1)
        # He initialisation for LeakyReLU(0.2): torch's default (uniform, a = sqrt(5)) shrinks the
        # activations about 10-fold per level of this normalisation-free U-Net (mean |feature|
        # 0.006 before the head), which left the deep layers' gradients (1e-10) under Adam's eps.
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, a=0.2, nonlinearity="leaky_relu")
                nn.init.zeros_(module.bias)
        # Start at the identity (VoxelMorph initialises the flow head with N(0, 1e-5)).
        nn.init.normal_(self.head.weight, std=1e-5)
        nn.init.zeros_(self.head.bias)

    @property
    def multiple(self) -> int:
        """Input sizes are padded to a multiple of this (the total down-sampling factor)."""
        return 2 ** (len(self.config.encoder) - 1)

    def velocity(self, x: torch.Tensor) -> torch.Tensor:
        """Half-resolution velocity ``(N, 3, D/2, H/2, W/2)`` (half-grid voxels) of ``x``.

        ``x`` is ``(N, 2, D, H, W)`` with every size a multiple of :attr:`multiple`.
        """
        skips = []
        for block in self.enc:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for block in self.dec:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-3:], mode="trilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.head(self.final(x))

    def padded_input(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """``cat([fixed, moving], 1)`` padded (replicate, at the high end) to :attr:`multiple`."""
        shape = tuple(fixed.shape[-3:])
        m = self.multiple
        padded = tuple(-(-n // m) * m for n in shape)
        x = torch.cat([fixed, moving], 1)
        if padded != shape:
            pad = []
            for n, p in zip(reversed(shape), reversed(padded), strict=True):
                pad += [0, p - n]
            x = F.pad(x, pad, mode="replicate")
        return x

    def displacement(self, velocity: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        """Full-resolution displacement ``(N, 3, *shape)`` of a half-resolution velocity of the
        padded input (float32, outside any autocast), cropped back to ``shape``."""
        padded = tuple(2 * n for n in velocity.shape[-3:])
        with torch.autocast(device_type=velocity.device.type, enabled=False):
            disp = integrate(velocity.float(), padded, self.config.squaring_steps)  # type: ignore[arg-type]
        return disp[..., : shape[0], : shape[1], : shape[2]]

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """Displacement ``(N, 3, D, H, W)``: fixed -> moving, ``warped(x) = moving(x + u(x))``."""
        shape = tuple(fixed.shape[-3:])
        return self.displacement(self.velocity(self.padded_input(fixed, moving)), shape)  # type: ignore[arg-type]


def normalise(image: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Robust [0, 1] scaling: 1st-99th percentile of the voxels in ``mask`` (else > 0), clipped.

    The same function feeds the network in training and at inference. Voxels outside ``mask``
    keep their scaled value (zeros of the US stay at or below 0 and are clipped to 0).
    """
    flat = image.detach().float().reshape(image.shape[0], -1)
    sel = (mask.reshape(mask.shape[0], -1) > 0) if mask is not None else flat > 0
    out = []
    for b in range(image.shape[0]):
        values = flat[b][sel[b]] if sel[b].sum() > 100 else flat[b]
        if values.numel() > 200_000:  # quantile has a size limit and is slow: subsample
            values = values[:: values.numel() // 200_000 + 1]
        lo, hi = torch.quantile(values, torch.tensor([0.01, 0.99], device=values.device))
        scale = (hi - lo).clamp_min(1e-6)
        out.append(((image[b : b + 1].float() - lo) / scale).clamp(0.0, 1.0))
    return torch.cat(out, 0)


def save_weights(model: RefinerNet, path: str | Path, meta: dict | None = None, half: bool = False) -> Path:
    """Write ``{"config", "state_dict", "meta"}`` (float16 tensors with ``half``), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.detach().cpu().half() if half else v.detach().cpu().float())
        for k, v in model.state_dict().items()
    }
    payload = {"config": asdict(model.config), "state_dict": state, "meta": meta or {}}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_weights(path: str | Path | None = None, device: str | torch.device = "cpu") -> RefinerNet:
    """The network of a weight file (default :func:`default_weights_path`), in eval mode.

    Raises :class:`~remind2reg.inference.errors.InputError` naming the path when it is missing or invalid.
    """
    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise InputError(
            f"refiner weights not found (train them with `remind2reg train-refiner --export {path}` "
            f"or set ${WEIGHTS_ENV})",
            path=path,
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model = RefinerNet(NetConfig.from_dict(payload["config"]))
        model.load_state_dict({k: v.float() for k, v in payload["state_dict"].items()})
    except (KeyError, RuntimeError, ValueError, OSError) as exc:
        raise InputError(f"invalid refiner weights ({exc})", path=path) from exc
    return model.to(device).eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
