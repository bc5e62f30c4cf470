"""r-robustness margins: the first-order bound's formula (the notes' worked example) on p0's Clopper-Pearson lower
bound (checked against the binomial distribution), the Jacobian against torch.func, per-point draws that do not
depend on the batch, the bisection's bracket, the share at the sample cap, censoring, and the family end to end."""
from __future__ import annotations

import pytest
import torch

import bench
from bench.data import load_dataset
from bench.errors import BenchError
from bench.families.vae_robustness.margins import bounds, first_order_bound, jacobian_frobenius
from bench.families.vae_robustness.vae import ConvVAE
from bench.store import Store
from bench.testing import threat_card
from tiny_vae import TINY, write_card

MARGIN = {"r": 0.25, "samples": 50, "p0_samples": 200, "alpha": 0.01, "max_radius": 2.0, "bisection": 4, "steps": 5}


def sharp_card(folder) -> str:
    """The tiny VAE trained longer with beta 0.01: its reconstructions follow the input (at beta 1 the tiny VAE's
    posterior is the prior and no attack within L2 6 breaks it), so the bisection has something to find."""
    recipe = {**TINY["recipe"], "params": {**TINY["recipe"]["params"], "epochs": 10, "beta": 0.01}}
    return write_card(folder, id="tiny-vae-sharp", recipe=recipe)


def run_rows(model, tmp_path, n: int = 40, batch_size: int = 500, **params):
    summary = bench.evaluate(model, threat_card("vae-margin", **{**MARGIN, **params}), dataset="digits",
                             task="generative", n=n, batch_size=batch_size, results=tmp_path, progress=False)
    return summary, Store(tmp_path).read_run(summary.run_id).rows.set_index("index")


def test_the_first_order_bound_is_the_notes_worked_example():
    # sigma = (0.2, 0.5, 1.0), p0 = 0.8, identity Jacobian: the shift sigma_min * Phi^-1(0.8) = 0.168
    bound = first_order_bound(torch.tensor([0.8, 0.5, 0.3]), torch.tensor([0.2, 0.2, 0.2]), torch.ones(3))
    torch.testing.assert_close(bound, torch.tensor([0.2 * 0.841621, 0.0, 0.0]), atol=1e-5, rtol=0)


def test_the_clopper_pearson_bounds_are_the_exact_binomial_ones():
    from scipy.stats import binom

    counts = torch.tensor([0.0, 37.0, 990.0, 1000.0])
    low, high = bounds(counts, 1000, 0.001)
    assert low[0] == 0 and high[3] == 1 and (low[1:] < counts[1:] / 1000).all() and (high[:3] > counts[:3] / 1000).all()
    assert low[3].item() == pytest.approx(0.001 ** (1 / 1000), rel=1e-6)  # k = n: P(all inside | p) = p^n = alpha
    assert high[0].item() == pytest.approx(1 - 0.001 ** (1 / 1000), rel=1e-5)
    for k, lo, hi in zip((37, 990), low[1:3].tolist(), high[1:3].tolist()):
        assert binom.sf(k - 1, 1000, lo) == pytest.approx(0.001, rel=1e-3)  # P(X >= k | lower) = alpha
        assert binom.cdf(k, 1000, hi) == pytest.approx(0.001, rel=1e-3)  # P(X <= k | upper) = alpha


def test_the_jacobian_norm_matches_torch_func():
    torch.manual_seed(0)
    vae = ConvVAE(channels=1, side=8, latent=4, width=8).eval()
    x = load_dataset("digits", "test").x[:3]
    ours = jacobian_frobenius(vae, x)
    for i in range(3):
        jac = torch.func.jacrev(lambda v: vae.encode(v.unsqueeze(0))[0][0])(x[i])
        assert ours[i].item() == pytest.approx(float(jac.detach().norm()), rel=1e-4)


def test_margins_end_to_end(tmp_path):
    card = sharp_card(tmp_path)
    summary = bench.evaluate(card, threat_card("vae-margin", **MARGIN), n=40, results=tmp_path, progress=False)
    rows = Store(tmp_path).read_run(summary.run_id).rows
    assert summary.headline == "margin_est" and not any("acc" in m for m in summary.metrics)
    n0, alpha = MARGIN["p0_samples"], MARGIN["alpha"]
    # p0 is a count of p0_samples draws; its lower bound is below it, and the bound is computed from the lower bound
    assert ((rows["p0"] * n0 - (rows["p0"] * n0).round()).abs() < 1e-4).all()
    below = rows[rows["p0"] < 1]
    assert (rows["p0_lower"] <= rows["p0"]).all() and (below["p0_lower"] < below["p0"]).all()
    expected = first_order_bound(torch.tensor(rows["p0_lower"].values), torch.tensor(rows["sigma_min"].values),
                                 torch.tensor(rows["jacobian_fro"].values))
    assert torch.allclose(torch.tensor(rows["margin_bound"].values).to(expected), expected, rtol=1e-5, atol=1e-7)
    assert (rows.loc[rows["p0_lower"] <= 0.5, "margin_bound"] == 0).all()
    assert ((rows["p0_lower"] > 0.5) & (rows["p0"] > rows["p0_lower"])).any()  # margin_bound is not from p0 itself
    # at cap: every draw inside, so the lower bound is alpha^(1/n) (the best n draws can show)
    assert (rows["at_cap"] == (rows["p0"] == 1)).all() and rows["at_cap"].any()
    assert rows.loc[rows["at_cap"], "p0_lower"].values == pytest.approx(alpha ** (1 / n0), rel=1e-5)
    assert summary.at_cap == pytest.approx(rows["at_cap"].mean())
    # the bisection's bracket: max_radius / 2^bisection wide where it ran, a point at either end of the range else
    width = rows["margin_est"] - rows["margin_low"]
    bisected = (rows["margin_est"] > 0) & ~rows["censored"]
    assert bisected.any() and (width[bisected] - MARGIN["max_radius"] / 2 ** MARGIN["bisection"]).abs().max() < 1e-6
    assert (width[~bisected] == 0).all()
    assert ((rows["margin_est"] >= 0) & (rows["margin_est"] <= MARGIN["max_radius"])).all()
    assert (rows.loc[rows["censored"], "margin_low"] == MARGIN["max_radius"]).all()
    assert (rows["violation"] == ((rows["margin_bound"] > rows["margin_est"]) & ~rows["censored"])).all()


def test_each_points_numbers_do_not_depend_on_its_batch(tmp_path):
    card = sharp_card(tmp_path)
    _, together = run_rows(bench.load_model(card), tmp_path / "together", n=10, batch_size=10)
    _, alone = run_rows(bench.load_model(card), tmp_path / "alone", n=10, batch_size=1)
    assert len(together) == len(alone) == 10 and together["p0"].nunique() > 1
    for column in ("p0", "p0_lower", "at_cap", "margin_low", "margin_est", "censored"):
        assert (together[column] == alone.loc[together.index, column]).all(), column


def test_the_curtailed_verdicts_are_those_of_every_draw(tmp_path):
    from scipy.stats import binom

    from bench.families.vae_robustness.margins import Breaker, MarginParams
    from bench.threats.base import Batch

    vae, x = bench.load_model(sharp_card(tmp_path)), load_dataset("digits", "test").x[:24]
    p, everyone = MarginParams(**MARGIN), torch.ones(24, dtype=torch.bool)
    batch = Batch(x, torch.zeros(24), torch.arange(24), seed=0, clean={}, run_seed=0)
    with torch.no_grad():
        centre = vae.reconstruct(x)
    curtailed, full = Breaker(vae, x, centre, 4, p, batch), Breaker(vae, x, centre, 4, p, batch)
    full.ROUND = p.samples  # one round: every draw decoded
    # broken: the upper bound <= 1/2, i.e. a one-sided binomial test of p = 1/2 at level alpha rejects
    assert curtailed.most == max(k for k in range(p.samples + 1) if binom.cdf(k, p.samples, 0.5) <= p.alpha)
    verdicts = [(curtailed(everyone, torch.full((24,), t)), full(everyone, torch.full((24,), t))) for t in (0.1, 1.0)]
    assert all(torch.equal(a, b) for a, b in verdicts)
    assert not verdicts[0][0].all() and verdicts[1][0].any()


def test_a_vae_that_ignores_its_input_is_censored_and_at_the_cap_everywhere(tmp_path):
    still = bench.load_model(sharp_card(tmp_path))  # mu constant, sigma tiny: no draw leaves r, no attack moves it
    with torch.no_grad():
        still.heads.weight.zero_()
        still.heads.bias[4:] = -8.0
    summary, rows = run_rows(still, tmp_path, n=20)
    assert rows["censored"].all() and rows["at_cap"].all() and not rows["violation"].any()
    assert (rows["margin_est"] == MARGIN["max_radius"]).all() and (rows["margin_low"] == MARGIN["max_radius"]).all()
    assert summary.censored == 1 and summary.margin_est_censored == 1 and summary.at_cap == 1


def test_a_noisy_encoder_has_margin_zero_and_nothing_censored(tmp_path):
    noisy = bench.load_model(sharp_card(tmp_path))  # noise that swamps every reconstruction: p0 = 0, margins 0
    with torch.no_grad():
        noisy.heads.bias[4:] = 8.0
    summary, rows = run_rows(noisy, tmp_path, n=20)
    assert summary.p0 < 0.1 and summary.margin_est == 0 and summary.margin_bound == 0
    assert not rows["censored"].any() and not rows["at_cap"].any() and summary.margin_est_censored == 0
    assert (rows["margin_low"] == 0).all()


def test_a_median_above_the_search_range_is_flagged_as_censored(tmp_path):
    summary, rows = run_rows(bench.load_model(sharp_card(tmp_path)), tmp_path, max_radius=0.2)
    assert 0.5 < rows["censored"].mean() < 1 and summary.margin_est_censored == 1
    assert summary.margin_est == pytest.approx(0.2)  # the median is only "at least 0.2"
    summary, rows = run_rows(bench.load_model(sharp_card(tmp_path)), tmp_path)
    assert rows["censored"].mean() < 0.5 and summary.margin_est_censored == 0 and summary.margin_est < 2.0


@pytest.mark.parametrize("params", [{"alpha": 0.5}, {"alpha": 0.0}, {"p0_samples": 1}, {"p0_samples": 10**9}])
def test_bad_statistics_params_are_refused(params):
    with pytest.raises(BenchError):
        threat_card("vae-margin", r=1.0, **params).validated_params()


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
