"""Conditional VAEs that learn perturbation sets (Wong & Kolter, "Learning perturbation sets for
robust machine learning", ICLR 2021).

prior p(z | x), posterior q(z | x, x~) and generator g(x, z). The set of a point x is the image of
an L2 ball in prior-standardised coordinates u:  S(x) = { g(x, mu_p(x) + sigma_p(x) * u) : |u| <= eps }.
u = 0 gives the prior-mean image, not the identity.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.families.learned_sets.pairs import affine_warp
from bench.models.archs import architecture

TASK = "perturbation-set"  # what a CVAE model is: a learned perturbation set

LOGVAR_MIN, LOGVAR_MAX = math.log(1e-3), math.log(10.0)


def bounded_logvar(raw: Tensor) -> Tensor:
    """Scaled tanh into [log 1e-3, log 10], so no variance collapses or explodes."""
    mid, half = (LOGVAR_MAX + LOGVAR_MIN) / 2, (LOGVAR_MAX - LOGVAR_MIN) / 2
    return mid + half * torch.tanh(raw)


def kl_normal(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) per example, summed over latent dimensions."""
    kl = 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1)
    return kl.flatten(1).sum(1)


class ConvEncoder(nn.Module):
    """Images (in_channels, side, side) -> (mu, bounded logvar) of a flat latent: ``depth`` strided convs
    doubling the width, so the receptive field covers large moves (rotations, translations)."""

    def __init__(self, in_channels: int, side: int, latent: int, width: int = 16, depth: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(depth):
            layers += [nn.Conv2d(channels, width * 2 ** i, 4, stride=2, padding=1), nn.ReLU()]
            channels, side = width * 2 ** i, side // 2
        self.body = nn.Sequential(*layers, nn.Flatten())
        features = channels * side ** 2
        self.mu, self.logvar = nn.Linear(features, latent), nn.Linear(features, latent)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        return self.mu(h), bounded_logvar(self.logvar(h))


def similarity_theta(params: Tensor) -> Tensor:
    """(angle, log-scale, tx, ty) -> 2x3 affine matrices of rotation, isotropic scale and translation."""
    angle, log_scale, tx, ty = params.unbind(1)
    scale = log_scale.exp()
    cos, sin = scale * torch.cos(angle), scale * torch.sin(angle)
    return torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)


class STNGenerator(nn.Module):
    """g(x, z) for spatial perturbations: z picks warps of x, which a small conv net blends.

    As in the paper, z reaches the output only through the warps. Feeding z to the blend as well
    (a "z-map" channel) lets the generator paint strokes that are no warp of x; the latent attack
    finds them, and even a classifier trained on real warps falls to 0% inside such a set.

    ``warp="affine"`` lets each warp be any affine map (the paper's STN); ``"similarity"`` restricts
    it to rotation, isotropic scale and translation, so shears are outside what a single warp can do.
    Every warp starts at the identity.
    """

    def __init__(self, channels: int, latent: int, transforms: int = 3, hidden: int = 64, width: int = 16,
                 warp: Literal["affine", "similarity"] = "affine"):
        super().__init__()
        self.warp = warp
        self.localizers = nn.ModuleList()
        for _ in range(transforms):
            head = nn.Linear(hidden, 6 if warp == "affine" else 4)
            nn.init.zeros_(head.weight)
            with torch.no_grad():
                head.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]) if warp == "affine" else torch.zeros(4))
            self.localizers.append(nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), head))
        self.blend = nn.Sequential(nn.Conv2d(transforms * channels, width, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(width, channels, 3, padding=1))

    def theta(self, localizer: nn.Module, z: Tensor) -> Tensor:
        out = localizer(z)
        return out.view(-1, 2, 3) if self.warp == "affine" else similarity_theta(out)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        warped = [affine_warp(x, self.theta(loc, z)) for loc in self.localizers]
        return torch.sigmoid(self.blend(torch.cat(warped, 1)))


class ConvGenerator(nn.Module):
    """g(x, z) for pixel-wise perturbations: x and a latent map through a small conv net."""

    def __init__(self, channels: int, side: int, latent: int, width: int = 32):
        super().__init__()
        self.side = side
        self.zmap = nn.Linear(latent, side * side)
        self.net = nn.Sequential(nn.Conv2d(channels + 1, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, channels, 3, padding=1))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        zmap = self.zmap(z).view(-1, 1, self.side, self.side)
        return torch.sigmoid(self.net(torch.cat([x, zmap], 1)))


def _bn_relu_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 3, padding=1, bias=False))


class _Bottleneck(nn.Module):
    """Pre-activation residual block big -> small -> big at full resolution (no downsampling)."""

    def __init__(self, big: int, small: int):
        super().__init__()
        self.body = nn.Sequential(_bn_relu_conv(big, small), _bn_relu_conv(small, big))

    def forward(self, h: Tensor) -> Tensor:
        return h + self.body(h)


class RectangleEncoder(nn.Module):
    """The paper's CIFAR-10-C "rectangle" encoder: residual blocks that never downsample."""

    def __init__(self, in_channels: int, side: int, latent: int, blocks: int, big: int, small: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, big, 3, padding=1, bias=False),
                                  *[_Bottleneck(big, small) for _ in range(blocks)],
                                  _bn_relu_conv(big, small), nn.BatchNorm2d(small), nn.ReLU(), nn.Flatten())
        self.mu, self.logvar = nn.Linear(small * side * side, latent), nn.Linear(small * side * side, latent)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        return self.mu(h), bounded_logvar(self.logvar(h))


class RectangleGenerator(nn.Module):
    """g(x, z): a latent map concatenated with x, then residual blocks at full resolution."""

    def __init__(self, channels: int, side: int, latent: int, blocks: int, big: int, small: int):
        super().__init__()
        self.side = side
        self.zmap = nn.Linear(latent, side * side)
        self.body = nn.Sequential(nn.Conv2d(channels + 1, big, 3, padding=1, bias=False),
                                  *[_Bottleneck(big, small) for _ in range(blocks)], _bn_relu_conv(big, channels))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        zmap = self.zmap(z).view(-1, 1, self.side, self.side)
        return torch.sigmoid(self.body(torch.cat([x, zmap], 1)))


class CVAE(nn.Module):
    def __init__(self, prior: nn.Module, posterior: nn.Module, generator: nn.Module,
                 likelihood: Literal["bernoulli", "gaussian"]):
        super().__init__()
        self.prior, self.posterior, self.generator = prior, posterior, generator
        self.likelihood = likelihood

    def latent(self, x: Tensor, u: Tensor) -> Tensor:
        """z = mu_p(x) + sigma_p(x) * u: the point u of the standardised latent ball."""
        mu_p, logvar_p = self.prior(x)
        return mu_p + (0.5 * logvar_p).exp() * u

    def perturb(self, x: Tensor, u: Tensor) -> Tensor:
        """The member g(x, mu_p + sigma_p * u) of x's perturbation set."""
        return self.generator(x, self.latent(x, u))

    def standardized_distance(self, x: Tensor, x_tilde: Tensor) -> Tensor:
        """r(x, x~) = |(mu_q - mu_p) / sigma_p|_2: how far in the ball the encoder puts the pair."""
        mu_p, logvar_p = self.prior(x)
        mu_q, _ = self.posterior(torch.cat([x, x_tilde], 1))
        return ((mu_q - mu_p) / (0.5 * logvar_p).exp()).flatten(1).norm(dim=1)

    def loss(self, x: Tensor, x_tilde: Tensor, beta: float, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """(recon + beta * KL, recon, KL), each summed over the batch, with a reparameterised sample."""
        mu_p, logvar_p = self.prior(x)
        mu_q, logvar_q = self.posterior(torch.cat([x, x_tilde], 1))
        eps = torch.randn(mu_q.shape, generator=gen).to(mu_q)
        out = self.generator(x, mu_q + (0.5 * logvar_q).exp() * eps)
        if self.likelihood == "bernoulli":
            recon = F.binary_cross_entropy(out, x_tilde, reduction="sum")
        else:
            recon = ((out - x_tilde) ** 2).sum()
        kl = kl_normal(mu_q, logvar_q, mu_p, logvar_p).sum()
        return recon + beta * kl, recon, kl


Likelihood = Literal["bernoulli", "gaussian"]


def small_cvae(kind: Literal["stn", "conv"], channels: int, side: int, latent: int = 16,
               likelihood: Likelihood = "bernoulli", width: int = 16, transforms: int = 3, depth: int = 2,
               warp: Literal["affine", "similarity"] = "affine") -> CVAE:
    """A CPU-sized CVAE: conv prior and posterior encoders, an STN (spatial) or conv (pixel) generator."""
    generator = (STNGenerator(channels, latent, transforms=transforms, width=width, warp=warp)
                 if kind == "stn" else ConvGenerator(channels, side, latent, width=2 * width))
    return CVAE(ConvEncoder(channels, side, latent, width, depth),
                ConvEncoder(2 * channels, side, latent, width, depth),
                generator, likelihood)


def rectangle_cvae(channels: int = 3, side: int = 32, latent: int = 64, blocks: int = 2, big: int = 32,
                   small: int = 8, likelihood: Likelihood = "gaussian") -> CVAE:
    """The paper's CIFAR-10-C CVAE (latent 512, 4 blocks, 64/16 channels), scaled down by default for CPUs."""
    return CVAE(RectangleEncoder(channels, side, latent, blocks, big, small),
                RectangleEncoder(2 * channels, side, latent, blocks, big, small),
                RectangleGenerator(channels, side, latent, blocks, big, small), likelihood)


# revision 1: the STN generator no longer feeds a z-map to its blend (weights of revision 0 do not load)
architecture("cvae-stn", revision=1, task=TASK)(lambda **kw: small_cvae("stn", **kw))
architecture("cvae-conv", task=TASK)(lambda **kw: small_cvae("conv", **kw))
architecture("cvae-rectangle", task=TASK)(rectangle_cvae)
