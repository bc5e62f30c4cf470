"""Whether a VAE is a model worth certifying, and how noisy the ELBO it is certified on is.

A VAE that ignores its input is "robust" for free: every certificate and margin holds trivially. Two checks,
both scale-aware (a fixed threshold on Var(mu) is not: an encoder whose std is capped at 0.3 passes it with
latents that carry almost nothing):

- ``active_dimensions``: a latent dimension carries information about x when its mean varies across points by
  more than the posterior's own noise, Var_x(mu_j) / E_x[sigma_j^2] > 1 (a signal-to-noise ratio; the mutual
  information of a Gaussian channel at that ratio is ln(2) / 2 nats);
- ``reconstruction_spread``: the median L2 distance between the reconstructions of test images of different
  classes, beside the median distance between the images themselves. A model whose reconstructions of
  different digits nearly coincide (``UTILITY`` below 5 on MNIST, where the images are about 10 apart) is
  collapsed, whatever its encoder does.

``surrogate_spread`` measures the certified quantity itself: the ELBO with the model's 8 shared noise vectors
(common random numbers) is one draw of a Monte Carlo estimate, and this is how far another draw would move it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

SNR_ACTIVE = 1.0
UTILITY = 5.0  # L2, MNIST: reconstructions of different digits at least this far apart (the images: about 10)


def active_dimensions(mu: Tensor, logvar: Tensor) -> int:
    """Latent dimensions whose mean varies across the points more than the posterior's variance."""
    snr = mu.var(0) / logvar.exp().mean(0).clamp_min(1e-12)
    return int((snr > SNR_ACTIVE).sum())


@dataclass(frozen=True)
class Spread:
    reconstructions: float  # median L2 between reconstructions of different-class pairs
    images: float  # median L2 between the images of the same pairs

    @property
    def collapsed(self) -> bool:
        return self.reconstructions < UTILITY


def _different_class_pairs(y: Tensor) -> tuple[Tensor, Tensor]:
    """Each point with the next one (cyclically), kept where the classes differ."""
    partner = torch.roll(torch.arange(len(y)), -1)
    keep = y != y[partner]
    return torch.arange(len(y))[keep], partner[keep]


@torch.no_grad()
def reconstruction_spread(model: nn.Module, x: Tensor, y: Tensor) -> Spread:
    a, b = _different_class_pairs(y)
    recon = model.reconstruct(x)
    distance = lambda v: (v[a] - v[b]).flatten(1).norm(dim=1).median()  # noqa: E731
    return Spread(float(distance(recon)), float(distance(x)))


@torch.no_grad()
def surrogate_spread(model: nn.Module, x: Tensor, draws: int = 32, seed: int = 1) -> dict[str, float]:
    """The shared-noise ELBO against ``draws`` other sets of as many noise vectors: the standard deviation of
    one point's ELBO across sets (median over points), of the mean over the points, and the shared set's
    offset from the mean of all sets (nats)."""
    gen = torch.Generator().manual_seed(seed)
    shared = model.elbo(x)
    others = torch.stack([model.elbo(x, torch.randn(model.noise.shape, generator=gen).to(x.device))
                          for _ in range(draws)])
    return {"point_sd": float(others.std(0).median()), "mean_sd": float(others.mean(1).std()),
            "offset": float(shared.mean() - others.mean())}
