"""Devices: what a user types (`auto`, `cpu`, `cuda:1`) as a torch device that exists here, and where a
caller's own module is evaluated (bench never moves a module it was given)."""
from __future__ import annotations

import torch
from torch import nn

from bench.errors import BenchError


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise BenchError(f"unknown device {device!r}", "use cpu, cuda, cuda:N, mps or auto") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"device {device} requested but CUDA is not available", "use --device cpu (or auto)")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise BenchError(f"device {device} requested but MPS is not available", "use --device cpu (or auto)")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise BenchError(f"device {device} is not supported", "use cpu, cuda, cuda:N, mps or auto")
    return dev


def module_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """A bare module is evaluated where it lives: bench does not move a caller's module."""
    own = next((p.device for p in model.parameters()), None)
    if own is None:
        return resolve_device(device)
    if own.type == "meta":
        raise BenchError("the model's parameters are on the meta device (they hold no values)",
                         "load real weights into the module first (e.g. model.to_empty(...) then load_state_dict)")
    if device is None or str(device) == "auto":
        return own
    wanted = resolve_device(device)
    if wanted.type != own.type or (wanted.index is not None and wanted != own):
        raise BenchError(f"the model is on {own} but device {wanted} was requested",
                         f"move it first (model.to('{wanted}')) or pass device='{own}'")
    return own
