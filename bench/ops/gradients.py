"""The gradient of a loss with respect to an attack's input, which is zero where there is no path."""
from __future__ import annotations

import torch
from torch import Tensor


def input_gradient(loss: Tensor, x: Tensor) -> Tensor:
    """d loss / d x; zeros when the loss does not depend on x through autograd (e.g. detached outputs),
    so an attack makes no progress instead of failing, and the gradient checks report it."""
    if not loss.requires_grad:
        return torch.zeros_like(x)
    grad, = torch.autograd.grad(loss, x, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad
