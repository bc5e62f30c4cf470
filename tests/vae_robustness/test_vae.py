"""VAEs and attacks on them: the ELBO against an independent computation, the total-correlation estimate,
the training recipe, and the vae-attack family's invariants (in the ball, never weaker than fewer steps,
deterministic, ranked by its headline in its direction, no accuracy anywhere)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import bench
from bench.data import load_dataset
from bench.errors import BenchError
from bench.families.vae_robustness.recipe import total_correlation
from bench.families.vae_robustness.vae import ConvVAE
from bench.leaderboard.table import build_board
from bench.store import Store
from bench.testing import threat_card
from tiny_vae import TINY, write_card



@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_dataset("digits", "test").x[:32]


def test_the_elbo_is_the_textbook_formula_and_independent_of_batching(digits):
    torch.manual_seed(0)
    vae = ConvVAE(channels=1, side=8, latent=4, width=8, samples=3).eval()
    with torch.no_grad():
        elbo = vae.elbo(digits)
        torch.testing.assert_close(torch.cat([vae.elbo(digits[i:i + 1]) for i in range(len(digits))]), elbo)
        mu, logvar = vae.encode(digits)
        q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
        kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1)
        decoded = [torch.distributions.Bernoulli(logits=vae.decode(mu + q.scale * e), validate_args=False)
                   for e in vae.noise]  # grey pixels are scored as soft Bernoulli targets (BCE), as usual
        ll = torch.stack([d.log_prob(digits).flatten(1).sum(1) for d in decoded]).mean(0)
    torch.testing.assert_close(elbo, ll - kl)


def test_the_gaussian_decoder_scores_a_perfect_mean_by_its_normalising_constant():
    vae = ConvVAE(channels=3, side=8, latent=4, width=8, likelihood="gaussian", sigma=0.1)
    x = torch.full((2, 3, 8, 8), 0.5)
    ll = vae.log_likelihood(x, torch.zeros_like(x))  # sigmoid(0) = 0.5: the mean is exact
    torch.testing.assert_close(ll, torch.full((2,), -0.5 * np.log(2 * np.pi * 0.01) * 192, dtype=torch.float32))


def test_total_correlation_is_larger_for_correlated_latents():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 1, generator=gen), torch.randn(256, 1, generator=gen)
    logvar = torch.full((256, 2), -6.0)
    independent = torch.cat([a, b], 1)
    correlated = torch.cat([a, a + 0.05 * b], 1)
    tc = {name: float(total_correlation(mu, mu, logvar, 10_000)) for name, mu in
          (("independent", independent), ("correlated", correlated))}
    assert tc["correlated"] > tc["independent"] + 1.0, tc


def test_the_recipe_trains_a_vae_whose_elbo_beats_its_initialisation(tmp_path, digits):
    card = bench.models.load_model_card(write_card(tmp_path))
    trained = bench.load_model(card)
    torch.manual_seed(0)
    untrained = ConvVAE(channels=1, side=8, latent=4, width=8).eval()
    with torch.no_grad():
        assert trained.elbo(digits).mean() > untrained.elbo(digits).mean() + 5
    tc = bench.load_model(write_card(tmp_path, id="tiny-tcvae", recipe={**TINY["recipe"], "params": {
        **TINY["recipe"]["params"], "objective": "beta-tcvae", "beta": 4}}))
    with torch.no_grad():
        assert torch.isfinite(tc.elbo(digits)).all()


def _run(card: str, results, n=40, **params):
    return bench.evaluate(card, threat_card("vae-attack", **params), n=n, results=results, progress=False)


@pytest.mark.parametrize("objective", ["max-damage", "latent", "elbo"])
@pytest.mark.parametrize("norm, eps", [("Linf", 0.1), ("L2", 1.0)])
def test_more_steps_never_find_less_and_nothing_is_an_accuracy(tmp_path, objective, norm, eps):
    card = write_card(tmp_path)
    few = _run(card, tmp_path / "a", objective=objective, norm=norm, eps=eps, steps=2, step_size=eps / 4)
    many = _run(card, tmp_path / "b", objective=objective, norm=norm, eps=eps, steps=10, step_size=eps / 4)
    rows = {k: Store(tmp_path / k).read_run(s.run_id).rows.set_index("index") for k, s in (("a", few), ("b", many))}
    column = {"max-damage": "damage", "latent": "target_dist", "elbo": "adv_elbo"}[objective]
    sign = 1 if objective == "max-damage" else -1  # what the attacker maximises
    assert (sign * rows["b"][column] >= sign * rows["a"][column].loc[rows["b"].index] - 1e-4).all()
    assert (rows["b"]["damage"] >= 0).all() and (rows["b"]["latent_dist"] >= 0).all()
    if objective == "elbo":
        assert (rows["b"]["elbo_drop"] >= -1e-4).all() and rows["b"]["elbo_drop"].mean() > 0
    assert many.headline == column and not any("acc" in name for name in many.metrics)


def test_an_attack_is_deterministic_under_a_seed_and_stays_in_the_ball(tmp_path):
    card = write_card(tmp_path)
    first = _run(card, tmp_path / "a", objective="max-damage", norm="L2", eps=0.5, steps=5, step_size=5.0)
    again = _run(card, tmp_path / "b", objective="max-damage", norm="L2", eps=0.5, steps=5, step_size=5.0)
    a = Store(tmp_path / "a").read_run(first.run_id).rows.drop(columns="seconds")
    b = Store(tmp_path / "b").read_run(again.run_id).rows.drop(columns="seconds")
    assert a.sort_values("index").reset_index(drop=True).equals(b.sort_values("index").reset_index(drop=True))
    assert first.damage > 0  # a step 10x the radius was projected back (check_points would refuse otherwise)


def test_the_board_ranks_vaes_by_the_attack_headline_in_its_direction(tmp_path):
    steady = write_card(tmp_path, id="steady-vae", recipe={**TINY["recipe"], "params": {**TINY["recipe"]["params"],
                                                                                   "beta": 8}})
    plain = write_card(tmp_path)
    for card in (steady, plain):
        _run(card, tmp_path / "res", objective="max-damage", norm="L2", eps=1.0, steps=5)
    (block,) = build_board(Store(tmp_path / "res")).blocks
    assert block.headline == "damage"
    damages = [row["damage"] for row in block.rows]
    assert damages == sorted(damages)  # lower damage ranks first


def test_classifier_threats_refuse_a_vae_and_vae_attacks_refuse_a_classifier(tmp_path, digits_card):
    with pytest.raises(BenchError, match="generative model"):
        bench.evaluate(write_card(tmp_path), "pgd-linf-0.3", dataset="digits", n=10, results=tmp_path, progress=False)
    with pytest.raises(BenchError, match="evaluates generative models"):
        _run(str(digits_card), tmp_path, objective="elbo", norm="Linf", eps=0.1)


def test_provae_needs_its_radius_and_only_provae_takes_one(tmp_path):
    from bench.errors import CardError
    from bench.models import load_model_card

    for params in ({"objective": "provae"}, {"objective": "elbo", "eps": 0.1}):
        path = write_card(tmp_path, recipe={**TINY["recipe"], "params": {**TINY["recipe"]["params"], **params}})
        with pytest.raises(CardError, match="provae needs eps"):
            load_model_card(path).make_recipe()


def test_a_provae_schedule_longer_than_training_is_refused(tmp_path):
    from bench.errors import CardError
    from bench.models import load_model_card

    params = {**TINY["recipe"]["params"], "objective": "provae", "eps": 0.02, "warmup": 0.3, "ramp": 0.8}
    with pytest.raises(CardError, match="warmup \\+ ramp is 1.1"):
        load_model_card(write_card(tmp_path, recipe={**TINY["recipe"], "params": params})).make_recipe()


def test_provae_on_a_model_its_certificate_cannot_bound_is_a_clear_error(tmp_path):
    """A lipschitz-vae has no conv-vae encoder and heads for the certified ELBO: `bench train` says so at the first
    batch, where it raised an AttributeError before."""
    from bench.errors import CardError

    arch = {"name": "lipschitz-vae", "kwargs": {"channels": 1, "side": 8, "latent": 4, "hidden": 16}}
    params = {**TINY["recipe"]["params"], "epochs": 1, "objective": "provae", "eps": 0.02}
    path = write_card(tmp_path, architecture=arch, recipe={**TINY["recipe"], "params": params})
    with pytest.raises(CardError, match="provae trains on the certified ELBO, which bounds conv-vae models, not "
                                        "LipschitzVAE"):
        bench.train(path, results=tmp_path / "results")


def test_the_provae_schedule_holds_its_radius_and_says_what_it_effectively_trains_at():
    from bench.families.vae_robustness.recipe import VAEParams, VAETraining, lr_weighted, provae_schedule

    base = {"epochs": 5, "lr": 0.002, "schedule": "onecycle", "objective": "provae", "eps": 0.02, "kappa_end": 0.8}
    old, held = VAEParams(**base, warmup=0.2, ramp=0.8), VAEParams(**base, warmup=0.2, ramp=0.2)
    assert provae_schedule(held, 0.1) == (1.0, 0.0) and provae_schedule(held, 0.3) == pytest.approx((0.9, 0.01))
    assert provae_schedule(held, 0.7) == pytest.approx((0.8, 0.02))
    # the reviewer, by hand: ramping to the last step, eps averages 0.0068 weighted by the learning rate
    effective = lr_weighted(VAETraining(old))
    assert effective["eps"] == pytest.approx(0.0068, abs=1e-4) and effective["held"] == 0.0
    assert effective["certified_weight"] == pytest.approx(0.068, abs=1e-3)
    assert lr_weighted(VAETraining(held))["held"] == pytest.approx(0.6, abs=1e-3)
