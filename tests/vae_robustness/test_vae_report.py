"""The VAE report's claim checks on made-up per-seed numbers: each verdict follows its statistic."""
from __future__ import annotations

from bench.families.vae_robustness.report import CERTIFIED, FAMILIES, MARGINS, PROVAE, claims, render


def _seed(margins=(0.1, 0.2, 0.3, 0.4), tc_elbo=-100.0, vae_elbo=-110.0, vae_ratio=5.0, pro_ratio=1.1,
          pro_active=8) -> dict:
    out = {"margins": {r: {} for r in MARGINS}, "certified": {}, "latent": {}}
    for family, models in FAMILIES.items():
        for (beta, card), margin in zip(models.items(), margins):
            elbo = -90.0 if beta == 1 else tc_elbo if family == "beta-TCVAE" else vae_elbo
            out["latent"][card] = {"kl": 20.0, "active": 16, "latent": 16}
            for r in MARGINS:
                out["margins"][r][card] = {"margin_est": margin, "margin_bound": margin / 10, "violation": 0.0,
                                           "p0": 0.8, "clean_elbo": elbo}
    out["latent"][PROVAE] = {"kl": 5.0, "active": pro_active, "latent": 16}
    for card, ratio in (("mnist-vae", vae_ratio), (PROVAE, pro_ratio)):
        out["certified"][card] = {eps: {"clean": -90.0, "attacked": -100.0, "certified": -100.0 * ratio}
                                  for eps in CERTIFIED}
    return out


def _verdicts(per_seed):
    return {claim: holds for claim, holds, _ in claims(per_seed)}


def test_verdicts_follow_the_statistics():
    grow = "r = 2, beta-VAE: the median empirical margin grows with beta (1, 2, 4, 8)"
    tc = "beta-TCVAE loses less ELBO than beta-VAE at equal beta (2, 4, 8)"
    vacuous = [c for c in _verdicts([_seed(), _seed()]) if c.startswith("at L-inf 0.05")][0]
    good = _verdicts([_seed(), _seed()])
    assert good[grow] is True and good[tc] is True and good[vacuous] is True
    assert _verdicts([_seed(margins=(0.4, 0.3, 0.2, 0.1))] * 2)[grow] is False
    assert _verdicts([_seed(), _seed(margins=(0.1, 0.3, 0.2, 0.4))])[grow] == "mixed"
    assert _verdicts([_seed(tc_elbo=-120.0)] * 2)[tc] is False
    assert _verdicts([_seed(pro_ratio=3.0)] * 2)[vacuous] is False
    collapsed = [c for c in good if c.startswith("proVAE keeps a latent code")][0]
    assert good[collapsed] is True and _verdicts([_seed(pro_active=0)] * 2)[collapsed] is False


def test_the_report_renders_every_section():
    settings = {"command": "bench vae report", "n_margin": 10, "n_elbo": 10, "device": "cpu", "threads": 2}
    text = render([_seed(), _seed()], [0, 1], settings, 1.0)
    for part in ("## Claims", "**PASS**", "## Margins", "## Certified ELBO", "| mnist-provae | 0.1 |", "seed 1:"):
        assert part in text, part
