"""CROWN (crown.py) and the linear pieces of the certified ELBO: every layer's bounds contain the float64
activations of sampled inputs, the shortcuts (packed rows, forward through one ReLU) give the bounds computed
without them, and the relaxations of the log-likelihood and of exp(v / 2) hold where they are claimed to."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.families.vae_robustness import crown
from bench.families.vae_robustness.certified import bernoulli_chord, half_exp_relaxation, through_reparameterisation
from bench.families.vae_robustness.crown import Bounded, Packing
from bench.families.vae_robustness.vae import ConvVAE


def _vae() -> ConvVAE:
    """MNIST-sized and narrow: rows of its convolutions are local, so they are packed."""
    torch.manual_seed(0)
    return ConvVAE(channels=1, side=28, latent=4, width=2, samples=2).eval()


def _boxes(gen: torch.Generator) -> dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    vae = _vae()
    images = torch.rand(3, 1, 28, 28, generator=gen, dtype=torch.float64)
    images = torch.where(images > 0.7, images, 0.0)
    codes = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    boxes = {"encoder": (nn.Sequential(vae.encoder, vae.heads), (images - 0.05).clamp(0, 1),
                         (images + 0.05).clamp(0, 1)),
             "decoder": (vae.decoder, codes - 0.3, codes + 0.3)}
    return {part: (net, lower.float().double(), upper.float().double()) for part, (net, lower, upper) in boxes.items()}


@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_every_layers_bounds_contain_the_float64_activations_of_sampled_inputs(part):
    gen = torch.Generator().manual_seed(0)
    net, lower, upper = _boxes(gen)[part]
    bounded = Bounded(net, lower, upper)
    exact = copy.deepcopy(net).double()
    corners = [torch.where(torch.rand(lower.shape, generator=gen, dtype=torch.float64) < 0.5, lower, upper)
               for _ in range(100)]
    inside = [lower + torch.rand(lower.shape, generator=gen, dtype=torch.float64) * (upper - lower) for _ in range(100)]
    with torch.no_grad():
        for x in corners + inside:
            for layer, (low, up) in zip(crown.leaves(exact), bounded.inputs[1:]):
                x = layer(x)
                assert (x >= low).all() and (x <= up).all(), layer
    low, up = crown.crown(net, lower.float(), upper.float())
    assert low.dtype == torch.float32
    assert (low.double() <= bounded.output[0]).all() and (up.double() >= bounded.output[1]).all()


def test_the_shortcuts_give_the_bounds_computed_without_them(monkeypatch):
    boxes = _boxes(torch.Generator().manual_seed(1))
    shortcut = {part: Bounded(net, lower, upper).inputs for part, (net, lower, upper) in boxes.items()}
    net, lower, upper = boxes["encoder"]
    layers = crown.leaves(net)
    assert Packing.plan(layers, [lo.shape[1:] for lo, _ in Bounded(net, lower, upper).inputs], 3) is not None
    monkeypatch.setattr(Packing, "plan", classmethod(lambda cls, *args: None))
    monkeypatch.setattr(crown, "FORWARD_INPUTS", 0)
    for part, (net, lower, upper) in boxes.items():  # up to the rounding slack (2^-30 of the terms' magnitude)
        for (low, up), (plain_low, plain_up) in zip(shortcut[part], Bounded(net, lower, upper).inputs):
            torch.testing.assert_close(low, plain_low, rtol=0, atol=1e-8)
            torch.testing.assert_close(up, plain_up, rtol=0, atol=1e-8)


def test_the_log_likelihood_chord_is_below_every_pixel_value_in_the_boxes():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2000, generator=gen, dtype=torch.float64)
    x_l, x_u = (x - 0.05).clamp(0, 1), (x + 0.05).clamp(0, 1)
    centre = torch.randn(2000, generator=gen, dtype=torch.float64) * 6
    width = torch.rand(2000, generator=gen, dtype=torch.float64) * 8 * (torch.rand(2000, generator=gen) > 0.1)
    out_l, out_u = centre - width, centre + width  # some of zero width
    slope, shift = bernoulli_chord(x_l, x_u, out_l, out_u)
    for _ in range(200):
        t = torch.rand(2, 2000, generator=gen, dtype=torch.float64)
        pixel, out = x_l + t[0] * (x_u - x_l), out_l + t[1] * (out_u - out_l)
        assert (pixel * out - F.softplus(out) >= slope * out + shift).all()
    at_ends = torch.minimum(x_l * out_u, x_u * out_u) - F.softplus(out_u)
    assert torch.allclose(slope * out_u + shift, at_ends, atol=1e-9)  # the chord: as tight as a line can be


def test_the_lines_around_exp_half_v_hold_on_the_interval_and_through_the_clamp():
    gen = torch.Generator().manual_seed(0)
    v_l = torch.randn(3000, generator=gen, dtype=torch.float64) * 6
    v_u = v_l + torch.rand(3000, generator=gen, dtype=torch.float64) * 6 * (torch.rand(3000, generator=gen) > 0.1)
    low_slope, low_shift, up_slope, up_shift = half_exp_relaxation(v_l, v_u)
    assert ((v_l < -12) | (v_u > 8)).any()
    for _ in range(200):
        v = v_l + torch.rand(3000, generator=gen, dtype=torch.float64) * (v_u - v_l)
        s = (0.5 * v.clamp(-12, 8)).exp()
        assert (low_slope * v + low_shift <= s).all() and (s <= up_slope * v + up_shift).all()


def test_rows_on_z_moved_to_the_heads_stay_below_through_the_reparameterisation():
    """lambda . (mu + e exp(clamp(v) / 2)) >= rows . (mu, v) + const for every v in the box, each sign of
    lambda e taking the line on its side."""
    gen = torch.Generator().manual_seed(0)
    k, n, latent = 3, 50, 4
    on_z, noise = torch.randn(k, n, latent, generator=gen, dtype=torch.float64), torch.randn(k, latent, generator=gen)
    v_l = torch.randn(n, latent, generator=gen, dtype=torch.float64) * 4
    v_u = v_l + torch.rand(n, latent, generator=gen, dtype=torch.float64) * 4
    on_heads, const = through_reparameterisation(on_z, noise, v_l, v_u)
    for _ in range(200):
        mu = torch.randn(n, latent, generator=gen, dtype=torch.float64)
        v = v_l + torch.rand(n, latent, generator=gen, dtype=torch.float64) * (v_u - v_l)
        z = mu + noise.double().unsqueeze(1) * (0.5 * v.clamp(-12, 8)).exp()
        assert ((on_z * z).sum(2) >= (on_heads * torch.cat([mu, v], 1)).sum(2) + const - 1e-12).all()
