"""The model as the engine's attacks call it: parameters frozen, so a gradient call computes no weight gradients;
optionally under autocast (``MixedPrecision``), or channels-last (``ChannelsLast``)."""
from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def frozen(model: nn.Module):
    """Parameters that need no gradient for the duration (restored after): backward passes then stop at the
    input, which saves the weight-gradient work the attacks never use."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)


class MixedPrecision(nn.Module):
    """The model's passes under autocast in ``dtype`` (bf16 or fp16), logits returned in fp32: faster passes for
    the attacks' search (bf16 forward+backward 1.6x on the AMX CPU behind docs/performance.md), never for a
    decision, which the engine leaves to the model in fp32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.model(x).float()


class ChannelsLast(nn.Module):
    """A copy of the model with its weights channels-last, called on channels-last images: on GPUs, convolutions
    in that layout run on tensor cores without transposing (most with mixed precision). The copy leaves the plain
    model, which decides every point, as it was; gradients come back in the images' usual layout, which the
    engine's steps and kernels expect."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(_ChannelsLast.apply(x) if x.dim() == 4 else x)


class _ChannelsLast(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def input_grad(model, x: torch.Tensor, loss_fn, seeded=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, per-point loss, gradient of the summed loss w.r.t. ``x``) in one forward and backward pass. A
    model whose outputs carry no gradient (detached, or computed outside autograd) gets a zero gradient, as
    PGD's does: the attack then cannot move, and the run's gradient check says so. ``seeded`` (optional): the
    logits -> (loss, its gradient at the logits), computed outside autograd (a fused kernel), or None where it
    does not apply; the backward pass then starts at the logits, skipping the loss's small ops."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = model(x)
        done = seeded(logits.detach()) if seeded is not None and logits.requires_grad else None
        if done is not None:
            loss, seed = done
            (grad,) = torch.autograd.grad(logits, x, grad_outputs=seed)
            return logits.detach(), loss, grad.detach()
        loss = loss_fn(logits)
        if not loss.requires_grad:
            return logits.detach(), loss.detach(), torch.zeros_like(x)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return logits.detach(), loss.detach(), grad.detach()
