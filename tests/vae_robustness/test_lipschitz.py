"""The Lipschitz-VAE certificate: the radius formula, Lipschitz constants that really bound the networks,
and the certificate checked by sampling at the certified radius."""
from __future__ import annotations

import pytest
import torch
import yaml

import bench
from bench.data import load_dataset
from bench.errors import BenchError
from bench.families.vae_robustness.lipschitz import LipschitzVAE, certified_radius
from bench.families.vae_robustness.margins import inside_counts, max_damage
from bench.testing import threat_card

TINY = {"id": "tiny-lvae", "dataset": "digits", "task": "generative",
        "architecture": {"name": "lipschitz-vae", "kwargs": {"channels": 1, "side": 8, "latent": 4, "hidden": 64,
                                                             "sigma_max": 0.3}},
        "recipe": {"name": "vae", "seed": 0, "params": {"epochs": 5, "batch_size": 64, "lr": 0.003}}}


def test_the_radius_is_the_root_of_the_markov_condition():
    # (b^2 + c^2) R^2 + 2 c s R + s^2 - r^2 / (2 a^2) at a = b = c = r = 1, s = 0.1: R = (-0.1 + sqrt(0.99)) / 2
    radius = certified_radius(torch.tensor([0.1, 0.7071, 1.0]), 1.0, 1.0, 1.0, 1.0)
    torch.testing.assert_close(radius, torch.tensor([0.447494, 0.0, 0.0]), atol=1e-5, rtol=0)
    s, r, a, b, c = 0.2, 2.0, 1.5, 0.7, 0.3
    root = float(certified_radius(torch.tensor([s], dtype=torch.float64), r, a, b, c))
    assert (b * b + c * c) * root ** 2 + 2 * c * s * root + s * s - r * r / (2 * a * a) == pytest.approx(0, abs=1e-9)


def test_the_lipschitz_constants_bound_the_networks():
    torch.manual_seed(0)
    vae = LipschitzVAE(channels=1, side=8, latent=4, hidden=32, sigma_max=0.5, gain=3.0).eval()  # a counts the gain
    k = vae.lipschitz_constants()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 8, 8, generator=gen)
    x2 = (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    z, z2 = torch.randn(64, 4, generator=gen), torch.randn(64, 4, generator=gen)
    with torch.no_grad():
        dx = (x - x2).flatten(1).norm(dim=1)
        (mu, lv), (mu2, lv2) = vae.encode(x), vae.encode(x2)
        assert ((mu - mu2).norm(dim=1) <= k["b"] * dx + 1e-6).all()
        assert (((0.5 * lv).exp() - (0.5 * lv2).exp()).norm(dim=1) <= k["c"] * dx + 1e-6).all()
        g, g2 = vae.mean(vae.decode(z)), vae.mean(vae.decode(z2))
        assert ((g - g2).flatten(1).norm(dim=1) <= k["a"] * (z - z2).norm(dim=1) + 1e-6).all()


def test_points_at_the_certified_radius_are_r_robust_by_sampling(tmp_path):
    path = tmp_path / "tiny-lvae.yaml"
    path.write_text(yaml.safe_dump(TINY))
    r = 3.0
    summary = bench.evaluate(str(path), threat_card("vae-lipschitz-margin", r=r), n=50, results=tmp_path,
                             progress=False)
    assert summary.certified_nonzero > 0.5, summary.certified_nonzero
    model = bench.load_model(str(path))
    x = load_dataset("digits", "test").x[:50]
    k = model.lipschitz_constants()
    with torch.no_grad():
        s = (0.5 * model.encode(x)[1]).exp().norm(dim=1)
    radius = certified_radius(s.double(), r, k["a"], k["b"], k["c"]).float()
    keep = radius > 0
    x, radius = x[keep], radius[keep]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        centre = model.reconstruct(x)
    noise = torch.randn(500, model.latent, generator=gen).expand(len(x), -1, -1)  # the same draws for every point
    attacked = max_damage(model, x, centre, radius, 20, gen)
    assert (inside_counts(model, attacked, centre, noise, r) / 500 > 0.5).all()


def test_the_certificate_refuses_a_vae_without_lipschitz_constants(tmp_path):
    data = {**TINY, "id": "conv", "architecture": {"name": "conv-vae", "kwargs": {"side": 8, "latent": 4,
                                                                                 "width": 8}}}
    path = tmp_path / "conv.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(BenchError, match="lipschitz_constants"):
        bench.evaluate(str(path), threat_card("vae-lipschitz-margin", r=1.0), n=10, results=tmp_path,
                       progress=False)


@pytest.mark.parametrize("gain", [0.0, -2.0, float("nan"), float("inf")])
def test_a_gain_that_is_not_a_positive_finite_number_is_refused(gain):
    from bench.families.vae_robustness.lipschitz import lipschitz_vae

    with pytest.raises(BenchError, match="positive, finite gain"):
        lipschitz_vae(side=8, gain=gain)
