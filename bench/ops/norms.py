"""Per-example L2 helpers, used by PGD in image space and in the latent space of learned sets."""
from __future__ import annotations

from torch import Tensor


def row_norm(t: Tensor) -> Tensor:
    """Per-example L2 norm, shaped to broadcast against t."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


def normalized(t: Tensor) -> Tensor:
    """Per-example unit L2 direction (zero rows stay zero): the step of L2 ascent or descent."""
    return t / row_norm(t).clamp_min(1e-12)


def project_l2(t: Tensor, eps: float) -> Tensor:
    """Per-example projection onto the L2 ball of radius eps around 0."""
    return t * (eps / row_norm(t).clamp_min(1e-12)).clamp(max=1.0)
