"""Lipschitz-constrained VAEs and their rigorous r-robustness margin (after Barrett et al., "Certifiably
Robust VAEs", AISTATS 2022; the bound below is derived here for bench's centre convention, not copied).

``lipschitz-vae``: an MLP VAE whose linear layers are spectrally normalised during training and whose
encoder standard deviation is sigma_max * sigmoid(.); the decoder's logits are scaled by ``gain``, its Lipschitz
constant (with every layer at spectral norm 1 and no gain, reconstructions can differ by at most a quarter of
the latent distance, and on MNIST every digit decodes to the same blur: a collapsed model that any radius
certifies). Its global Lipschitz constants are computed from the
*exact* spectral norms of the weights (SVD, not the training-time power iteration), with ReLU 1-Lipschitz
and the sigmoid 1/4-Lipschitz: a for the decoder mean g, b for the encoder mean mu, c for the encoder
standard deviation sigma (L2 to L2).

Certificate. With z' ~ q(z | x'), ||x' - x||_2 <= R and s = ||sigma(x)||_2, Markov's inequality gives
P(||g(z') - g(mu(x))||_2 > r) <= a^2 E||z' - mu(x)||^2 / r^2 = a^2 (||mu(x') - mu(x)||^2 + ||sigma(x')||^2) / r^2
<= a^2 (b^2 R^2 + (s + c R)^2) / r^2, which is below one half, so x' is r-robust, for every R below the
positive root of (b^2 + c^2) R^2 + 2 c s R + s^2 - r^2 / (2 a^2) = 0. No root (s >= r / (a sqrt 2)): the
certified margin is 0. The ``vae-lipschitz-margin`` family reports it per point.
"""
from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from bench.errors import BenchError, NotApplicable
from bench.families.vae_robustness.vae import VAEMixin
from bench.metrics import Metric
from bench.models.archs import architecture
from bench.params import Params
from bench.tasks.generative import model_name
from bench.threats.base import THREAT_FAMILIES, Batch, Outcome, Target, Threat


def _linear(n_in: int, n_out: int) -> nn.Module:
    return spectral_norm(nn.Linear(n_in, n_out))


def _operator_norm(layer: nn.Module) -> float:
    return float(torch.linalg.matrix_norm(layer.weight.detach().double(), ord=2))


class LipschitzVAE(VAEMixin, nn.Module):
    def __init__(self, channels: int = 1, side: int = 28, latent: int = 8, hidden: int = 256,
                 sigma_max: float = 1.0, samples: int = 8, gain: float = 1.0):
        super().__init__()
        self.gain = gain
        d = channels * side * side
        self.likelihood, self.sigma, self.latent, self.sigma_max = "bernoulli", 0.0, latent, sigma_max
        self.body = nn.Sequential(nn.Flatten(), _linear(d, hidden), nn.ReLU(), _linear(hidden, hidden), nn.ReLU())
        self.mu_head, self.std_head = _linear(hidden, latent), _linear(hidden, latent)
        self.decoder = nn.Sequential(_linear(latent, hidden), nn.ReLU(), _linear(hidden, hidden), nn.ReLU(),
                                     _linear(hidden, d), nn.Unflatten(1, (channels, side, side)))
        self.init_noise(samples, latent)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        std = self.sigma_max * torch.sigmoid(self.std_head(h))
        return self.mu_head(h), 2 * torch.log(std.clamp_min(1e-6))

    def decode(self, z: Tensor) -> Tensor:
        return self.gain * self.decoder(z)

    def lipschitz_constants(self) -> dict[str, float]:
        """Upper bounds on the Lipschitz constants (L2): decoder mean a, encoder mean b, encoder std c."""
        body = math.prod(_operator_norm(m) for m in self.body if isinstance(m, nn.Linear))
        decoder = math.prod(_operator_norm(m) for m in self.decoder if isinstance(m, nn.Linear))
        return {"a": self.gain * decoder / 4, "b": body * _operator_norm(self.mu_head),
                "c": self.sigma_max / 4 * body * _operator_norm(self.std_head)}


@architecture("lipschitz-vae", task="generative")
def lipschitz_vae(channels: int = 1, side: int = 28, latent: int = 8, hidden: int = 256, sigma_max: float = 1.0,
                  samples: int = 8, gain: float = 1.0) -> nn.Module:
    if not (math.isfinite(gain) and gain > 0):
        raise BenchError(f"lipschitz-vae needs a positive, finite gain, got {gain!r}",
                         "gain is the decoder's Lipschitz constant on its logits, e.g. 1 to 100")
    return LipschitzVAE(channels, side, latent, hidden, sigma_max, samples, gain)


def certified_radius(s: Tensor, r: float, a: float, b: float, c: float) -> Tensor:
    """The positive root of (b^2 + c^2) R^2 + 2 c s R + s^2 - r^2 / (2 a^2), or 0 where there is none."""
    quad = b * b + c * c
    const = s.pow(2) - r * r / (2 * a * a)
    disc = (c * s).pow(2) - quad * const
    root = (-c * s + disc.clamp_min(0).sqrt()) / quad
    return torch.where(const < 0, root, torch.zeros_like(root))


class LipschitzParams(Params):
    r: float = Field(gt=0)


@THREAT_FAMILIES.register("vae-lipschitz-margin")
class VAELipschitzMargin(Threat):
    """The certified r-robustness margin of a Lipschitz VAE per point (a certificate, unlike vae-margin's
    first-order estimate)."""

    tasks = ("generative",)
    Params = LipschitzParams
    params: LipschitzParams
    metrics = (Metric("certified_margin", "certified_margin", "certified margin (median, L2)", agg="quantile",
                      q=0.5),
               Metric("certified_nonzero", "certified_nonzero", "points with a positive certified margin",
                      agg="rate"))
    headline = "certified_margin"

    def unsupported(self, model: nn.Module) -> NotApplicable | None:
        if callable(getattr(model, "lipschitz_constants", None)):
            return None
        return NotApplicable("has no lipschitz_constants(); the certificate needs global Lipschitz constants",
                             "use an architecture: lipschitz-vae card (or vae-margin for the first-order estimate)")

    def attack(self, target: Target, batch: Batch) -> Outcome:
        model = target.module
        self.require_supported(model, model_name(model))
        k = model.lipschitz_constants()
        if not all(isinstance(k.get(name), (int, float)) and k[name] > 0 for name in "abc"):
            raise BenchError(f"{type(model).__name__}.lipschitz_constants() gave {k}; the certificate needs positive "
                             "constants a, b and c", "a constant of 0 means a layer is all zeros: check the weights")
        with torch.no_grad():
            s = (0.5 * model.encode(batch.x)[1]).exp().norm(dim=1)
        radius = certified_radius(s.double(), self.params.r, k["a"], k["b"], k["c"]).float()
        return Outcome(values={"certified_margin": radius, "certified_nonzero": radius > 0})
