"""Interval bounds and the certified ELBO: bounds contain sampled activations, certified <= attacked <= clean,
certified equals clean at eps 0 and falls as eps grows, for both decoders."""
from __future__ import annotations

import pytest
import torch
import yaml

import bench
from bench.data import load_dataset
from bench.families.vae_robustness.certified import certified_elbo, kl_upper
from bench.families.vae_robustness.ibp import interval
from bench.families.vae_robustness.vae import ConvVAE, gaussian_kl
from bench.store import Store
from bench.testing import threat_card
from tiny_vae import TINY



@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_dataset("digits", "test").x[:16]


def _vae(likelihood: str = "bernoulli", channels: int = 1) -> ConvVAE:
    torch.manual_seed(0)
    return ConvVAE(channels=channels, side=8, latent=4, width=8, likelihood=likelihood, samples=4).eval()


def _inside_ball(x: torch.Tensor, eps: float, gen: torch.Generator) -> torch.Tensor:
    return (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * eps).clamp(0, 1)


def test_interval_bounds_contain_every_layers_sampled_activations(digits):
    vae, gen = _vae(), torch.Generator().manual_seed(0)
    lower, upper = (digits - 0.1).clamp(0, 1), (digits + 0.1).clamp(0, 1)
    samples = [_inside_ball(digits, 0.1, gen) for _ in range(20)] + [lower, upper]
    for layer in [*vae.encoder, vae.heads]:
        new_lower, new_upper = interval(layer, lower, upper)
        with torch.no_grad():
            samples = [layer(s) for s in samples]
        for s in samples:
            assert (s >= new_lower).all() and (s <= new_upper).all(), layer
        lower, upper = new_lower, new_upper
    z_l, z_u = torch.full((4, 4), -1.0), torch.full((4, 4), 1.0)
    out_l, out_u = interval(vae.decoder, z_l, z_u)
    with torch.no_grad():
        for _ in range(20):
            out = vae.decoder(torch.rand(4, 4, generator=gen) * 2 - 1)
            assert (out >= out_l).all() and (out <= out_u).all()


def test_the_kl_bound_is_above_the_kl_of_every_point_of_the_box():
    gen = torch.Generator().manual_seed(0)
    mu_l, v_l = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    mu_u, v_u = mu_l + 0.5, v_l + 0.5
    bound = kl_upper(mu_l, mu_u, v_l, v_u)
    for _ in range(50):
        t = torch.rand(2, 5, 3, generator=gen)
        assert (gaussian_kl(mu_l + 0.5 * t[0], v_l + 0.5 * t[1]) <= bound + 1e-6).all()


@pytest.mark.parametrize("likelihood, channels", [("bernoulli", 1), ("gaussian", 3)])
def test_the_certified_elbo_is_below_the_elbo_everywhere_in_the_ball_and_exact_at_zero(digits, likelihood, channels):
    vae, gen = _vae(likelihood, channels), torch.Generator().manual_seed(1)
    x = digits.repeat(1, channels, 1, 1)
    with torch.no_grad():
        clean = vae.elbo(x)
        torch.testing.assert_close(certified_elbo(vae, x, 0.0), clean, rtol=1e-4, atol=1e-3)
        previous = clean
        for eps in (0.01, 0.03, 0.1):
            bound = certified_elbo(vae, x, eps)
            assert (bound <= previous + 1e-3).all()  # falls as the ball grows
            for _ in range(10):
                assert (bound <= vae.elbo(_inside_ball(x, eps, gen)) + 1e-3).all()
            previous = bound


def test_the_family_orders_certified_attacked_and_clean_elbo(tmp_path):
    path = tmp_path / "tiny-vae.yaml"
    path.write_text(yaml.safe_dump(TINY))
    card = threat_card("vae-certified-elbo", eps=0.05, steps=10)
    summary = bench.evaluate(str(path), card, n=30, results=tmp_path, progress=False)
    rows = Store(tmp_path).read_run(summary.run_id).rows
    assert (rows["certified_elbo"] <= rows["adv_elbo"] + 1e-3).all()
    assert (rows["adv_elbo"] <= rows["clean_elbo"] + 1e-4).all()
    assert (rows["certificate_gap"] >= -1e-3).all() and summary.headline == "certified_elbo"
    at_zero = bench.evaluate(str(path), threat_card("vae-certified-elbo", eps=0.0), n=30, results=tmp_path,
                             progress=False)
    assert at_zero.certified_elbo == pytest.approx(at_zero.clean_elbo, rel=1e-4)


def test_provae_keeps_its_certified_elbo_where_a_standard_vaes_collapses(tmp_path):
    """The proVAE claim in miniature (8x8 digits, 5 epochs, seed 0): at eps 0.1 the standard VAE's certified
    ELBO is several times its clean one, proVAE's stays near its own clean ELBO, which is barely worse."""
    x = load_dataset("digits", "test").x[:200]
    models = {}
    for name, extra in (("plain", {}), ("provae", {"objective": "provae", "eps": 0.1})):
        data = {**TINY, "id": f"tiny-{name}", "recipe": {**TINY["recipe"], "params": {
            **TINY["recipe"]["params"], "epochs": 5, **extra}}}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        models[name] = bench.load_model(str(path))
    with torch.no_grad():
        clean = {k: float(m.elbo(x).mean()) for k, m in models.items()}
        certified = {k: float(certified_elbo(m, x, 0.1).mean()) for k, m in models.items()}
    assert certified["plain"] < 3 * clean["plain"]  # ELBOs are negative: "vacuous" = far below
    assert certified["provae"] > 1.5 * clean["provae"]
    assert clean["provae"] > clean["plain"] - 5
