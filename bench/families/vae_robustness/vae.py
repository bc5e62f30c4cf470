"""Convolutional VAEs for images in [0, 1]: a Bernoulli decoder (MNIST) or a Gaussian one with a fixed
standard deviation (CIFAR-10), and their ELBO.

``elbo(x)`` is the Monte Carlo ELBO per image in nats, E_e[log p(x | mu + sigma * e)] - KL(q(z | x) || N(0, I)),
over ``samples`` noise vectors e_k drawn once from a fixed seed and shared by every image (common random
numbers): it is deterministic, does not depend on how points are batched, and attacks and certificates
that use the same e_k compare like with like. The KL is analytic. The Bernoulli decoder scores grey pixels
as soft targets (binary cross-entropy), as MNIST VAEs usually do: a lower bound of that score, not of a
normalised density over grey values.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import BenchError
from bench.models.archs import architecture

NOISE_SEED = 0


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, in nats."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(1)


class VAEMixin:
    """What every bench VAE shares, given ``encode(x) -> (mu, logvar)``, ``decode(z)``, ``likelihood`` and
    ``sigma``: the decoder mean, the log-likelihood, the deterministic reconstruction and the ELBO."""

    likelihood: str
    sigma: float
    noise: Tensor

    def init_noise(self, samples: int, latent: int) -> None:
        noise = torch.randn(samples, latent, generator=torch.Generator().manual_seed(NOISE_SEED))
        self.register_buffer("noise", noise, persistent=False)

    def mean(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out)

    def log_likelihood(self, x: Tensor, out: Tensor) -> Tensor:
        """log p(x | z) per image for the decoder output ``out``."""
        if self.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(1)
        var = self.sigma ** 2
        return (-(x - self.mean(out)).pow(2) / (2 * var) - 0.5 * math.log(2 * math.pi * var)).flatten(1).sum(1)

    def reconstruct(self, x: Tensor) -> Tensor:
        """The deterministic reconstruction: the decoder mean at z = mu(x)."""
        return self.mean(self.decode(self.encode(x)[0]))

    def elbo(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """Monte Carlo ELBO per image over the shared noise vectors (or the given ones, (K, latent))."""
        mu, logvar = self.encode(x)
        noise = self.noise if noise is None else noise
        std = (0.5 * logvar).exp()
        z = mu.unsqueeze(0) + std.unsqueeze(0) * noise.unsqueeze(1)  # (K, N, latent)
        out = self.decode(z.flatten(0, 1))
        ll = self.log_likelihood(x.repeat(len(noise), 1, 1, 1), out).view(len(noise), len(x)).mean(0)
        return ll - gaussian_kl(mu, logvar)

    def forward(self, x: Tensor) -> Tensor:
        return self.reconstruct(x)


class ConvVAE(VAEMixin, nn.Module):
    """Encoder: two stride-2 convolutions and a linear layer to (mu, log sigma^2); decoder: the mirror."""

    def __init__(self, channels: int = 1, side: int = 28, latent: int = 16, width: int = 32,
                 likelihood: Literal["bernoulli", "gaussian"] = "bernoulli", sigma: float = 0.1, samples: int = 8):
        super().__init__()
        if side % 4:
            raise BenchError(f"the VAE needs image sides divisible by 4, got {side}", "pad the images")
        self.channels, self.side, self.latent, self.likelihood, self.sigma = channels, side, latent, likelihood, sigma
        inner = 2 * width * (side // 4) ** 2
        self.encoder = nn.Sequential(nn.Conv2d(channels, width, 4, 2, 1), nn.ReLU(),
                                     nn.Conv2d(width, 2 * width, 4, 2, 1), nn.ReLU(), nn.Flatten())
        self.heads = nn.Linear(inner, 2 * latent)
        self.decoder = nn.Sequential(nn.Linear(latent, inner), nn.ReLU(),
                                     nn.Unflatten(1, (2 * width, side // 4, side // 4)),
                                     nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.ReLU(),
                                     nn.ConvTranspose2d(width, channels, 4, 2, 1))
        self.init_noise(samples, latent)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.heads(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 8)

    def decode(self, z: Tensor) -> Tensor:
        """The decoder's output: Bernoulli logits, or the Gaussian mean's pre-sigmoid value."""
        return self.decoder(z)


@architecture("conv-vae", task="generative")
def conv_vae(channels: int = 1, side: int = 28, latent: int = 16, width: int = 32, likelihood: str = "bernoulli",
             sigma: float = 0.1, samples: int = 8) -> nn.Module:
    if likelihood not in ("bernoulli", "gaussian"):
        raise BenchError(f"unknown likelihood {likelihood!r}", "use bernoulli (MNIST) or gaussian (CIFAR-10)")
    return ConvVAE(channels, side, latent, width, likelihood, sigma, samples)
