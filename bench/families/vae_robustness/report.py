"""The MNIST reproduction report of VAE robustness (Camuto et al., 2021; Condessa & Kolter, 2020), CPU-sized.

For every seed: train the VAE, the beta-VAEs and beta-TCVAEs at beta 2, 4, 8, and proVAE (recipe seed =
seed); measure every beta model's r-robustness margins (``vae-margin-r2``: the empirical margin by attack
and the first-order estimate), its clean ELBO, and the clean, attacked and certified ELBO of the VAE and
proVAE at L-inf 0.01, 0.05 and 0.1. Everything goes through ``bench.evaluate`` into one results folder, so
the report resumes. Each claim is decided per seed (PASS in every seed, FAIL in none, MIXED otherwise) and
stated with its statistic.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from bench.errors import BenchError
from bench.reports import VERDICT_WORDS, SeedRunner, Verdict, mean_sd, verdict, write_report

BETAS = (1, 2, 4, 8)
FAMILIES = {"beta-VAE": {1: "mnist-vae", 2: "mnist-vae-beta2", 4: "mnist-vae-beta4", 8: "mnist-vae-beta8"},
            "beta-TCVAE": {1: "mnist-vae", 2: "mnist-tcvae-beta2", 4: "mnist-tcvae-beta4", 8: "mnist-tcvae-beta8"}}
PROVAE = "mnist-provae"
MARGINS = {2.0: "vae-margin-r2", 4.0: "vae-margin-r4", 6.0: "vae-margin-r6"}  # r -> card: one r for all models
ACTIVE = 0.01  # a latent dimension is active when its mean varies across test points by more than this
CERTIFIED = {0.01: "vae-certified-elbo-0.01", 0.02: "vae-certified-elbo-0.02", 0.05: "vae-certified-elbo-0.05",
             0.1: "vae-certified-elbo-0.1"}
VACUOUS, CLOSE = 2.0, 1.25  # certified / attacked ELBO: "vacuous" at >= 2x, "close" within 25%


def run_seed(seed: int, work: Path, *, n_margin: int, n_elbo: int, device: str) -> dict:
    runner = SeedRunner(seed, work, device)
    cards = {card_id: runner.card("model", card_id) for family in FAMILIES.values() for card_id in family.values()}
    cards[PROVAE] = runner.card("model", PROVAE)
    out: dict = {"margins": {r: {} for r in MARGINS}, "certified": {}, "latent": {}}
    for card_id, path in cards.items():
        out["latent"][card_id] = latent_usage(path, n_elbo, device)
        if card_id == PROVAE:
            continue
        for r, threat in MARGINS.items():
            run = runner.run(path, threat, n_margin)
            out["margins"][r][card_id] = {"margin_est": run.margin_est, "margin_bound": run.margin_bound,
                                          "violation": run.violation, "p0": run.p0, "clean_elbo": run.clean_elbo}
    for card_id in (FAMILIES["beta-VAE"][1], PROVAE):
        out["certified"][card_id] = {}
        for eps, threat in CERTIFIED.items():
            run = runner.run(cards[card_id], threat, n_elbo)
            out["certified"][card_id][eps] = {"clean": run.clean_elbo, "attacked": run.adv_elbo,
                                              "certified": run.certified_elbo}
    return out


@torch.no_grad()
def latent_usage(card: Path, n: int, device: str) -> dict[str, float]:
    """Mean KL and active latent dimensions on n test points: a collapsed posterior (no active dimension)
    makes a VAE trivially robust, since its output ignores its input."""
    from bench.data import load_dataset, subset_indices
    from bench.families.vae_robustness.vae import gaussian_kl
    from bench.training import build_trained

    model = build_trained(str(card), device=device)
    test = load_dataset("mnist", "test")
    mu, logvar = model.encode(test.x[subset_indices(len(test), n)].to(device))
    return {"kl": float(gaussian_kl(mu, logvar).mean()), "active": int((mu.var(0) > ACTIVE).sum()),
            "latent": mu.shape[1]}


def _fmt(values: list[float], digits: int = 2) -> str:
    return mean_sd(values, 1, digits)


def claims(per_seed: list[dict]) -> list[tuple[str, Verdict, str]]:
    out = []
    for r in MARGINS:
        for family, models in FAMILIES.items():
            for column, what, digits in (("margin_est", "median empirical margin", 3),
                                         ("margin_bound", "median first-order margin estimate", 4)):
                series = [[s["margins"][r][models[b]][column] for b in BETAS] for s in per_seed]
                grows = [all(b >= a for a, b in zip(m, m[1:])) and m[-1] > m[0] for m in series]
                out.append((f"r = {r:g}, {family}: the {what} grows with beta (1, 2, 4, 8)", verdict(grows),
                            "per seed: " + "; ".join(", ".join(f"{v:.{digits}f}" for v in m) for m in series)))
    less = [[s["margins"][2.0][FAMILIES["beta-TCVAE"][b]]["clean_elbo"]
             - s["margins"][2.0][FAMILIES["beta-VAE"][b]]["clean_elbo"] for b in BETAS[1:]] for s in per_seed]
    out.append(("beta-TCVAE loses less ELBO than beta-VAE at equal beta (2, 4, 8)",
                verdict([all(d > 0 for d in diffs) for diffs in less]),
                "clean ELBO of beta-TCVAE minus beta-VAE (nats) at beta 2, 4, 8, per seed: "
                + "; ".join(", ".join(f"{d:+.1f}" for d in diffs) for diffs in less)))
    vae, pro = FAMILIES["beta-VAE"][1], PROVAE
    for eps in CERTIFIED:
        ratio = {k: [s["certified"][k][eps]["certified"] / s["certified"][k][eps]["attacked"] for s in per_seed]
                 for k in (vae, pro)}
        holds = [r_vae >= VACUOUS and r_pro <= CLOSE for r_vae, r_pro in zip(ratio[vae], ratio[pro])]
        out.append((f"at L-inf {eps}: the standard VAE's certified ELBO is vacuous (at least {VACUOUS:g}x its "
                    f"attacked ELBO) where proVAE's stays close (within {CLOSE - 1:.0%})", verdict(holds),
                    f"certified / attacked ELBO: VAE {_fmt(ratio[vae])}, proVAE {_fmt(ratio[pro])}"))
    active = [s["latent"][pro]["active"] for s in per_seed]
    out.append(("proVAE keeps a latent code (at least half its latent dimensions active), so its certificate is "
                "not bought by ignoring the input", verdict([a >= s["latent"][pro]["latent"] / 2
                                                            for a, s in zip(active, per_seed)]),
                f"active dimensions per seed: {', '.join(map(str, active))} of {per_seed[0]['latent'][pro]['latent']}"
                f" (mean KL {_fmt([s['latent'][pro]['kl'] for s in per_seed], 1)} nats, against "
                f"{_fmt([s['latent'][vae]['kl'] for s in per_seed], 1)} for the VAE)"))
    return out


def render(per_seed: list[dict], seeds: list[int], settings: dict, seconds: float) -> str:
    lines = ["# VAE robustness on MNIST: reproduction report", "",
             "Camuto et al., *Towards a Theoretical Understanding of the Robustness of Variational Autoencoders* "
             "(AISTATS 2021): r-robustness margins; Condessa & Kolter, *Provably robust deep generative models* "
             "(2020): a certified ELBO and proVAE. The bound algebra and proVAE's schedule are derived in the notes, "
             "not taken from the papers.", "",
             f"Written by `{settings['command']}` on {settings['device']} ({settings['threads']} threads; this "
             f"invocation {seconds / 60:.1f} min, reusing stored runs and weights); seeds "
             f"{', '.join(map(str, seeds))} (recipe and evaluation seed). Values are mean ± standard deviation over "
             f"seeds. Margins: cards {', '.join(f'`{c}`' for c in MARGINS.values())} (one r for every model) on "
             f"{settings['n_margin']} test points; ELBOs and latent usage on {settings['n_elbo']}.",
             "", "## Claims", "", "Each claim is decided per seed: PASS in every seed, FAIL in none, MIXED "
             "otherwise.", ""]
    for claim, holds, statistic in claims(per_seed):
        lines.append(f"- **{VERDICT_WORDS[holds]}**: {claim}. {statistic}.")
    lines += ["", "## Margins (L2, input space)", "",
              "`margin_est`: median empirical margin (max-damage attack with bisection; an upper bound on the true "
              "margin). `margin_bound`: median first-order margin (an estimate, not a certificate). `violation`: "
              "share of points whose first-order margin exceeds the attack's.", "",
              "| r | model | beta | clean ELBO | KL | active dims | p0 | margin_est | margin_bound | violation (%) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in MARGINS:
        for family, models in FAMILIES.items():
            for beta, card_id in models.items():
                m = [s["margins"][r][card_id] for s in per_seed]
                lat = [s["latent"][card_id] for s in per_seed]
                lines.append(f"| {r:g} | {family} | {beta} | {_fmt([v['clean_elbo'] for v in m], 1)} | "
                             f"{_fmt([v['kl'] for v in lat], 1)} | {_fmt([v['active'] for v in lat], 1)} | "
                             f"{_fmt([v['p0'] for v in m])} | {_fmt([v['margin_est'] for v in m], 3)} | "
                             f"{_fmt([v['margin_bound'] for v in m], 4)} | "
                             f"{_fmt([100 * v['violation'] for v in m], 1)} |")
    lines += ["", "## Certified ELBO (nats, L-inf)", "",
              "Attacked: ELBO-lowering PGD-40. Certified: interval bound propagation through encoder and decoder "
              "with the ELBO's shared noise vectors (a lower bound on the ELBO of every input in the ball).", "",
              "| model | eps | clean | attacked | certified |", "|---|---|---|---|---|"]
    for card_id in (FAMILIES["beta-VAE"][1], PROVAE):
        for eps in CERTIFIED:
            c = [s["certified"][card_id][eps] for s in per_seed]
            lines.append(f"| {card_id} | {eps} | {_fmt([v['clean'] for v in c], 1)} | "
                         f"{_fmt([v['attacked'] for v in c], 1)} | {_fmt([v['certified'] for v in c], 1)} |")
    lines += ["", "## Per-seed values", "", "```", *(f"seed {seed}: {s}" for seed, s in zip(seeds, per_seed)),
              "```", ""]
    return "\n".join(lines)


def build_report(seeds: list[int], out: Path, work: Path, *, n_margin: int, n_elbo: int, device: str,
                 command: str) -> Path:
    if len(seeds) < 2:
        raise BenchError("a reproduction report needs at least 2 seeds", "pass e.g. --seed 0 --seed 1")
    start = time.perf_counter()
    per_seed = [run_seed(seed, work, n_margin=n_margin, n_elbo=n_elbo, device=device) for seed in seeds]
    settings = {"command": command, "n_margin": n_margin, "n_elbo": n_elbo, "device": device,
                "threads": torch.get_num_threads()}
    return write_report(out, render(per_seed, seeds, settings, time.perf_counter() - start))
