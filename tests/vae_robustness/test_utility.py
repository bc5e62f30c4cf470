"""The collapse checks: a scale-aware active-dimension count and the reconstruction spread flag a Lipschitz VAE
whose decoder ignores its code (the old MNIST card's failure), and pass one with a decoder gain; the spread of
the 8-draw ELBO is measured, and vanishes with the posterior's noise."""
from __future__ import annotations

import pytest
import torch
import yaml

import bench
from bench.data import load_dataset
from bench.families.vae_robustness.utility import active_dimensions, reconstruction_spread, surrogate_spread
from tiny_vae import write_card


def test_active_dimensions_compare_the_spread_of_the_means_with_the_posterior_noise():
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(500, 3, generator=gen) * torch.tensor([0.15, 1.0, 0.15])
    logvar = torch.log(torch.tensor([0.09, 0.09, 0.0001])).expand(500, 3)
    # dimension 0: Var(mu) = 0.02 > 0.01 (the old test called it active) but far below sigma^2 = 0.09
    assert active_dimensions(mu, logvar) == 2


@pytest.fixture(scope="module")
def digits():
    test = load_dataset("digits", "test")
    return test.x[:300], test.y[:300]


def _lipschitz_vae(folder, gain: float, sigma_max: float):
    card = {"id": f"tiny-lvae-gain{gain:g}", "dataset": "digits", "task": "generative",
            "architecture": {"name": "lipschitz-vae", "kwargs": {"channels": 1, "side": 8, "latent": 4, "hidden": 64,
                                                                 "sigma_max": sigma_max, "gain": gain}},
            "recipe": {"name": "vae", "seed": 0, "params": {"epochs": 5, "batch_size": 64, "lr": 0.003}}}
    path = folder / f"{card['id']}.yaml"
    path.write_text(yaml.safe_dump(card))
    return bench.load_model(str(path)).eval()


def test_a_lipschitz_vae_without_gain_is_flagged_collapsed_and_one_with_gain_is_not(tmp_path, digits):
    x, y = digits
    for gain, sigma_max, collapsed in ((1, 0.3, True), (15, 0.1, False)):
        model = _lipschitz_vae(tmp_path, gain, sigma_max)
        with torch.no_grad():
            active = active_dimensions(*model.encode(x))
        spread = reconstruction_spread(model, x, y)
        assert spread.images > 2.5  # 8x8 digits of different classes
        if collapsed:
            assert active == 0 and spread.reconstructions < 0.05 * spread.images, (active, spread)
        else:
            assert active == 4 and spread.reconstructions > 0.1 * spread.images, (active, spread)


def test_the_spread_of_the_shared_noise_elbo_vanishes_with_the_posterior_noise(tmp_path, digits):
    model = bench.load_model(write_card(tmp_path)).eval()
    x = digits[0][:64]
    spread = surrogate_spread(model, x, draws=16)
    assert spread["point_sd"] > 0.05 and spread["mean_sd"] > 0  # common noise moves every point's ELBO together
    encode = model.encode
    model.encode = lambda v: (encode(v)[0], torch.full_like(encode(v)[1], -12.0))  # sigma = e^-6
    assert surrogate_spread(model, x, draws=16)["point_sd"] < 0.01 * spread["point_sd"]
