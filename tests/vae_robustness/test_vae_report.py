"""The VAE report's claim checks on made-up per-seed numbers: each verdict follows its statistic, and an interval
that crosses its threshold leaves a claim unresolved instead of passing it."""
from __future__ import annotations

from bench.families.vae_robustness.report import (BOUNDS, CERTIFIED, FAMILIES, LIPSCHITZ, MARGINS, PROVAE, VAE,
                                                  claims, render)
from bench.reports import UNRESOLVED

UP = (0.2, 0.1, 0.3)  # a difference with its interval above 0


def _seed(step=UP, tc=(2.0, 1.0, 3.0), vae_ratio=50.0, pro_ratio=1.5, pro_active=8, versus=(5.0, 2.0, 8.0),
          censored=False, reconstructions=6.0) -> dict:
    cards = sorted({c for f in FAMILIES.values() for c in f.values()} | {PROVAE, LIPSCHITZ})
    row = {"margin_est": 1.0, "margin_low": 0.9, "margin_bound": 0.1, "violation": 0.0, "p0": 0.99,
           "p0_lower": 0.98, "at_cap": 0.1, "censored": 0.1, "margin_est_censored": censored, "clean_elbo": -100.0}
    out = {"margins": {r: {c: dict(row) for c in cards} for r in MARGINS},
           "grows": {r: {f: {col: [step] * 3 for col in ("margin_est", "margin_bound")} for f in FAMILIES}
                     for r in MARGINS},
           "tc_less": {b: tc for b in (2, 4, 8)},
           "latent": {c: {"kl": 20.0, "active": 16 if c != PROVAE else pro_active, "latent": 16} for c in cards},
           "surrogate": {c: {"point_sd": 1.0, "mean_sd": 0.05, "offset": 0.1} for c in (VAE, PROVAE)},
           "certified": {c: {eps: {b: {"clean": -90.0, "attacked": -100.0, "certified": -90.0 - 10 * ratio,
                                       "seconds": 3.0, "drop_ratio": ratio} for b in BOUNDS} for eps in CERTIFIED}
                         for c, ratio in ((VAE, vae_ratio), (PROVAE, pro_ratio))},
           "versus": {eps: {"clean": (-15.0, -16.0, -14.0), "attacked": versus, "certified": versus,
                            "pro_certified_minus_vae_attacked": -3.0} for eps in CERTIFIED},
           "lipschitz": {"certified_margin": 0.7, "certified_nonzero": 0.9, "clean_elbo": -158.0,
                         "reconstructions": reconstructions, "images": 10.4, "collapsed": reconstructions < 5},
           "schedule": {"eps": 0.0153, "certified_weight": 0.153, "held": 0.6}}
    return out


def _verdicts(per_seed):
    return {claim: holds for claim, holds, _ in claims(per_seed)}


def _claim(start: str) -> str:
    return next(c for c in _verdicts([_seed(), _seed()]) if c.startswith(start))


def test_verdicts_follow_the_statistics():
    grow, tc = _claim("r = 2, beta-VAE: the median empirical"), _claim("beta-TCVAE loses less")
    close, attacked = _claim("at L-inf 0.02, certified by CROWN"), _claim("proVAE's attacked ELBO")
    collapsed, lipschitz = _claim("proVAE keeps a latent code"), _claim("the Lipschitz VAE is not collapsed")
    good = _verdicts([_seed(), _seed()])
    assert all(good[c] is True for c in (grow, tc, close, attacked, collapsed, lipschitz))
    assert _verdicts([_seed(step=(-0.2, -0.3, -0.1))] * 2)[grow] is False
    assert _verdicts([_seed(), _seed(step=(-0.2, -0.3, -0.1))])[grow] == "mixed"
    assert _verdicts([_seed(tc=(-2.0, -3.0, -1.0))] * 2)[tc] is False
    assert _verdicts([_seed(pro_ratio=3.0)] * 2)[close] is False
    assert _verdicts([_seed(vae_ratio=1.5)] * 2)[close] is False
    assert _verdicts([_seed(versus=(-5.0, -8.0, -2.0))] * 2)[attacked] is False
    assert _verdicts([_seed(pro_active=0)] * 2)[collapsed] is False
    assert _verdicts([_seed(reconstructions=0.07)] * 2)[lipschitz] is False


def test_a_tie_or_an_interval_across_zero_is_not_growth():
    grow = _claim("r = 4, beta-TCVAE: the median empirical")
    assert _verdicts([_seed(step=(0.0, 0.0, 0.0))] * 2)[grow] is False  # one median equal to the next
    assert _verdicts([_seed(step=(0.06, -0.01, 0.12))] * 2)[grow] == UNRESOLVED  # one bisection step, in the noise
    assert _verdicts([_seed(tc=(2.0, -1.0, 5.0))] * 2)[_claim("beta-TCVAE loses less")] == UNRESOLVED


def test_a_median_censored_at_the_search_end_cannot_be_shown_to_grow():
    grow, bound = _claim("r = 6, beta-VAE: the median empirical"), _claim("r = 6, beta-VAE: the median first")
    verdicts = _verdicts([_seed(censored=True)] * 2)
    assert verdicts[grow] == UNRESOLVED and verdicts[bound] is True  # the first-order estimate is not censored


def test_the_report_renders_every_section():
    settings = {"command": "bench vae report", "n_margin": 10, "n_elbo": 10, "n_certified": 10, "device": "cpu",
                "threads": 2}
    text = render([_seed(), _seed(censored=True)], [0, 1], settings, 1.0)
    for part in ("## Claims", "**PASS**", "## Margins", "## Certified ELBO", "| mnist-provae | 0.1 |", "seed 1:",
                 "8 noise vectors", "eps averages 0.0153", "## Lipschitz VAE", "| ≥ 1.000 ± 0.000 |",
                 "drop ratio (IBP)"):
        assert part in text, part
