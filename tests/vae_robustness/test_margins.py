"""r-robustness margins: the first-order bound's formula (the notes' worked example), the Jacobian against
torch.func, a margin of 0 where the clean probability is at most one half, and the family end to end."""
from __future__ import annotations

import pytest
import torch

import bench
from bench.data import load_dataset
from bench.families.vae_robustness.margins import first_order_bound, jacobian_frobenius
from bench.families.vae_robustness.vae import ConvVAE
from bench.store import Store
from bench.testing import threat_card
from tiny_vae import write_card

MARGIN = {"r": 1.0, "samples": 50, "max_radius": 2.0, "bisection": 4, "steps": 5}


def test_the_first_order_bound_is_the_notes_worked_example():
    # sigma = (0.2, 0.5, 1.0), p0 = 0.8, identity Jacobian: the shift sigma_min * Phi^-1(0.8) = 0.168
    bound = first_order_bound(torch.tensor([0.8, 0.5, 0.3]), torch.tensor([0.2, 0.2, 0.2]), torch.ones(3), 1000)
    torch.testing.assert_close(bound, torch.tensor([0.2 * 0.841621, 0.0, 0.0]), atol=1e-5, rtol=0)
    capped = first_order_bound(torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([2.0]), 100)
    assert torch.isfinite(capped).all() and capped.item() == pytest.approx(2.5758 / 2, abs=1e-3)  # Phi^-1(0.995)


def test_the_jacobian_norm_matches_torch_func():
    torch.manual_seed(0)
    vae = ConvVAE(channels=1, side=8, latent=4, width=8).eval()
    x = load_dataset("digits", "test").x[:3]
    ours = jacobian_frobenius(vae, x)
    for i in range(3):
        jac = torch.func.jacrev(lambda v: vae.encode(v.unsqueeze(0))[0][0])(x[i])
        assert ours[i].item() == pytest.approx(float(jac.detach().norm()), rel=1e-4)


def test_margins_end_to_end_and_zero_where_the_clean_probability_is_at_most_a_half(tmp_path):
    card = write_card(tmp_path)
    summary = bench.evaluate(card, threat_card("vae-margin", **MARGIN), n=40, results=tmp_path, progress=False)
    rows = Store(tmp_path).read_run(summary.run_id).rows
    assert summary.headline == "margin_est" and not any("acc" in m for m in summary.metrics)
    low = rows["p0"] <= 0.5
    assert (rows.loc[low, "margin_bound"] == 0).all() and (rows.loc[low, "margin_est"] == 0).all()
    assert ((rows["margin_est"] >= 0) & (rows["margin_est"] <= MARGIN["max_radius"])).all()
    assert (rows["violation"] == (rows["margin_bound"] > rows["margin_est"])).all()
    assert (rows.loc[rows["censored"], "margin_est"] == MARGIN["max_radius"]).all()

    noisy = bench.load_model(card)  # an encoder whose noise swamps every reconstruction: p0 = 0, margins 0
    with torch.no_grad():
        noisy.heads.bias[4:] = 8.0
    shaky = bench.evaluate(noisy, threat_card("vae-margin", **MARGIN), dataset="digits", task="generative", n=20,
                           results=tmp_path, progress=False)
    assert shaky.p0 < 0.1 and shaky.margin_est == 0 and shaky.margin_bound == 0


def test_the_margin_attack_stays_in_each_points_own_ball():
    from bench.families.vae_robustness.margins import max_damage

    torch.manual_seed(0)
    vae = ConvVAE(channels=1, side=8, latent=4, width=8).eval()
    x = load_dataset("digits", "test").x[:12]
    radius = torch.linspace(0.05, 2.0, 12)
    with torch.no_grad():
        centre = vae.reconstruct(x)
    x_adv = max_damage(vae, x, centre, radius, 10, torch.Generator().manual_seed(0))
    assert ((x_adv - x).flatten(1).norm(dim=1) <= radius * (1 + 1e-4) + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        damage = (vae.reconstruct(x_adv) - centre).flatten(1).norm(dim=1)
    assert (damage > 0).all()
