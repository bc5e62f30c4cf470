"""The MNIST reproduction report of VAE robustness (Camuto et al., 2021; Condessa & Kolter, 2020), CPU-sized.

For every seed (recipe and evaluation seed):

- train the VAE, the beta-VAEs and beta-TCVAEs at beta 2, 4, 8, proVAE and the Lipschitz VAE;
- margins (``vae-margin-r2``, ``-r4``, ``-r6``) of every beta model: the empirical margin by attack, bracketed
  by bisection, the first-order estimate from a Clopper-Pearson lower bound on p0, and the shares of points
  at the sample cap and censored at the search's end;
- the clean, attacked and certified ELBO of the VAE and proVAE at L-inf 0.01, 0.02 (proVAE's training
  radius), 0.05 and 0.1, certified by linear bound propagation (CROWN, the default) and by interval bounds
  (IBP, what proVAE trains with);
- latent usage (active dimensions by signal-to-noise, ``utility.py``), the spread of the 8-draw ELBO the
  certificates bound, and the Lipschitz VAE's utility gate beside its certified margin.

Everything goes through ``bench.evaluate`` into one results folder, so the report resumes. Each claim is
decided per seed from an interval over the points (a paired bootstrap of medians, or a mean's interval), so
a tie or a difference inside the noise is not a PASS, and stated with its statistic.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from bench.errors import BenchError
from bench.reports import UNRESOLVED, VERDICT_WORDS, SeedRunner, Verdict, mean_sd, verdict, write_report
from bench.families.vae_robustness.recipe import lr_weighted
from bench.families.vae_robustness.utility import UTILITY, active_dimensions, reconstruction_spread, surrogate_spread
from bench.stats import mean_interval, paired_median_difference

BETAS = (1, 2, 4, 8)
FAMILIES = {"beta-VAE": {1: "mnist-vae", 2: "mnist-vae-beta2", 4: "mnist-vae-beta4", 8: "mnist-vae-beta8"},
            "beta-TCVAE": {1: "mnist-vae", 2: "mnist-tcvae-beta2", 4: "mnist-tcvae-beta4", 8: "mnist-tcvae-beta8"}}
VAE, PROVAE, LIPSCHITZ = "mnist-vae", "mnist-provae", "mnist-lipschitz-vae"
MARGINS = {2.0: "vae-margin-r2", 4.0: "vae-margin-r4", 6.0: "vae-margin-r6"}  # r -> card: one r for all models
LIPSCHITZ_MARGIN = "vae-lipschitz-margin-r4"
CERTIFIED = {0.01: "vae-certified-elbo-0.01", 0.02: "vae-certified-elbo-0.02", 0.05: "vae-certified-elbo-0.05",
             0.1: "vae-certified-elbo-0.1"}
BOUNDS = ("crown", "ibp")
CLOSE = 2.0  # a certificate is close when its ELBO drop is at most this multiple of the attack's


def _ibp(card_id: str):
    """The catalogue's certified-ELBO card with interval bounds instead of its default."""
    from bench.threats.card import load_threat_card

    card = load_threat_card(card_id)
    return card.model_copy(update={"id": f"{card_id}-ibp", "params": {**card.params, "bound": "ibp"}})


def _points(runner: SeedRunner, summary, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    frame = runner.rows(summary.run_id).set_index("index").sort_index()
    return {c: frame[c].to_numpy(dtype=np.float64) for c in columns}


def _interval(values: np.ndarray) -> tuple[float, float, float]:
    low, high = mean_interval(values)
    return float(values.mean()), low, high


def run_seed(seed: int, work: Path, *, n_margin: int, n_elbo: int, n_certified: int, device: str) -> dict:
    from bench.models.card import load_model_card
    from bench.training import build_trained

    runner = SeedRunner(seed, work, device)
    beta_models = sorted({c for family in FAMILIES.values() for c in family.values()})
    cards = {card_id: runner.card("model", card_id) for card_id in sorted({*beta_models, PROVAE, LIPSCHITZ})}
    models = {card_id: build_trained(str(path), device=device).eval() for card_id, path in cards.items()}
    x, y = _test_points(n_elbo, device)
    out: dict = {"margins": {}, "grows": {}, "tc_less": {}, "certified": {}, "versus": {}, "latent": {},
                 "surrogate": {}}
    for card_id, model in models.items():
        out["latent"][card_id] = latent_usage(model, x)
    for card_id in (VAE, PROVAE):
        out["surrogate"][card_id] = surrogate_spread(models[card_id], x)
    columns = ("margin_est", "margin_bound", "clean_elbo", "margin_low")
    for r, threat in MARGINS.items():
        out["margins"][r], points = {}, {}
        for card_id in beta_models:
            run = runner.run(cards[card_id], threat, n_margin)
            points[card_id] = _points(runner, run, columns)
            out["margins"][r][card_id] = {name: getattr(run, name) for name in (
                "margin_est", "margin_bound", "violation", "p0", "p0_lower", "at_cap", "censored",
                "margin_est_censored", "clean_elbo")} | {"margin_low": float(np.median(points[card_id]["margin_low"]))}
        out["grows"][r] = {family: {column: [paired_median_difference(points[a][column], points[b][column])
                                             for a, b in zip(list(ids_)[:-1], list(ids_)[1:])]
                                    for column in columns[:2]}
                           for family, ids_ in ((f, m.values()) for f, m in FAMILIES.items())}
        if r == 2.0:
            out["tc_less"] = {b: _interval(points[FAMILIES["beta-TCVAE"][b]]["clean_elbo"]
                                           - points[FAMILIES["beta-VAE"][b]]["clean_elbo"]) for b in BETAS[1:]}
    elbos: dict = {}
    for card_id in (VAE, PROVAE):
        out["certified"][card_id], elbos[card_id] = {}, {}
        for eps, threat in CERTIFIED.items():
            out["certified"][card_id][eps], elbos[card_id][eps] = {}, {}
            for bound in BOUNDS:
                run = runner.run(cards[card_id], threat if bound == "crown" else _ibp(threat), n_certified)
                p = _points(runner, run, ("clean_elbo", "adv_elbo", "certified_elbo"))
                elbos[card_id][eps][bound] = p
                out["certified"][card_id][eps][bound] = {
                    "clean": float(p["clean_elbo"].mean()), "attacked": float(p["adv_elbo"].mean()),
                    "certified": float(p["certified_elbo"].mean()), "seconds": run.seconds,
                    "drop_ratio": float((p["clean_elbo"] - p["certified_elbo"]).mean()
                                        / max((p["clean_elbo"] - p["adv_elbo"]).mean(), 1e-9))}
    for eps in CERTIFIED:  # proVAE minus the VAE on the same points
        pro, vae = elbos[PROVAE][eps]["crown"], elbos[VAE][eps]["crown"]
        out["versus"][eps] = {what: _interval(pro[column] - vae[column]) for what, column in (
            ("clean", "clean_elbo"), ("attacked", "adv_elbo"), ("certified", "certified_elbo"))}
        out["versus"][eps]["pro_certified_minus_vae_attacked"] = float((pro["certified_elbo"]
                                                                        - vae["adv_elbo"]).mean())
    run = runner.run(cards[LIPSCHITZ], LIPSCHITZ_MARGIN, n_elbo)
    spread = reconstruction_spread(models[LIPSCHITZ], x, y)
    out["lipschitz"] = {"certified_margin": run.certified_margin, "certified_nonzero": run.certified_nonzero,
                        "clean_elbo": run.clean_elbo, "reconstructions": spread.reconstructions,
                        "images": spread.images, "collapsed": spread.collapsed}
    out["schedule"] = lr_weighted(load_model_card(cards[PROVAE]).make_recipe())
    return out


def _test_points(n: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    from bench.data import load_dataset, subset_indices

    test = load_dataset("mnist", "test")
    chosen = subset_indices(len(test), n)
    return test.x[chosen].to(device), test.y[chosen]


@torch.no_grad()
def latent_usage(model, x: torch.Tensor) -> dict[str, float]:
    """Mean KL and active latent dimensions (signal-to-noise above 1): a collapsed posterior makes a VAE
    trivially robust, since its output ignores its input."""
    from bench.families.vae_robustness.vae import gaussian_kl

    mu, logvar = model.encode(x)
    return {"kl": float(gaussian_kl(mu, logvar).mean()), "active": active_dimensions(mu, logvar),
            "latent": mu.shape[1]}


def _above(intervals: list[tuple[float, float, float]]) -> bool | str:
    """Every difference above 0 (its interval's low end), some at or below it (high end), or unresolved."""
    if all(low > 0 for _, low, _ in intervals):
        return True
    return False if any(high <= 0 for _, _, high in intervals) else UNRESOLVED


def _grows(seed: dict, r: float, family: str, column: str) -> bool | str:
    """Each step of beta raises the median, by its paired bootstrap interval; a step from a model whose median
    is censored (at least max_radius) cannot be shown to grow."""
    models = list(FAMILIES[family].values())
    if column == "margin_est" and any(seed["margins"][r][m]["margin_est_censored"] for m in models[:-1]):
        return UNRESOLVED
    return _above(seed["grows"][r][family][column])


def _fmt(values: list[float], digits: int = 2) -> str:
    return mean_sd(values, 1, digits)


def _col(rows: list[dict], key: str, digits: int = 2, scale: float = 1.0) -> str:
    """One table cell: ``key`` of each seed's row, mean ± sd over seeds."""
    return mean_sd([row[key] for row in rows], scale, digits)


def _steps(intervals: list[tuple[float, float, float]], digits: int) -> str:
    return ", ".join(f"{d:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]" for d, low, high in intervals)


def claims(per_seed: list[dict]) -> list[tuple[str, Verdict, str]]:
    out = []
    for r in MARGINS:
        for family in FAMILIES:
            for column, what, digits in (("margin_est", "median empirical margin", 3),
                                         ("margin_bound", "median first-order margin estimate", 4)):
                out.append((f"r = {r:g}, {family}: the {what} grows with beta (1, 2, 4, 8)",
                            verdict([_grows(s, r, family, column) for s in per_seed]),
                            "change of the median from each beta to the next with its 95% paired bootstrap "
                            "interval, per seed: " + "; ".join(_steps(s["grows"][r][family][column], digits)
                                                               for s in per_seed)))
    out.append(("beta-TCVAE loses less ELBO than beta-VAE at equal beta (2, 4, 8)",
                verdict([_above(list(s["tc_less"].values())) for s in per_seed]),
                "clean ELBO of beta-TCVAE minus beta-VAE on the same points (nats, mean and 95% interval) at beta "
                "2, 4, 8, per seed: " + "; ".join(_steps(list(s["tc_less"].values()), 1) for s in per_seed)))
    for bound in BOUNDS:
        for eps in CERTIFIED:
            ratio = {k: [s["certified"][k][eps][bound]["drop_ratio"] for s in per_seed] for k in (VAE, PROVAE)}
            holds = [r_vae > CLOSE >= r_pro for r_vae, r_pro in zip(ratio[VAE], ratio[PROVAE])]
            out.append((f"at L-inf {eps}, certified by {bound.upper()}: the standard VAE's certificate is loose "
                        f"(its certified ELBO drop more than {CLOSE:g}x the attack's) where proVAE's is close (at "
                        f"most {CLOSE:g}x)", verdict(holds),
                        f"(clean - certified) / (clean - attacked), mean over points: VAE {_fmt(ratio[VAE])}, "
                        f"proVAE {_fmt(ratio[PROVAE])}"))
    for what, column in (("certified", "certified"), ("attacked", "attacked")):
        per = [[s["versus"][eps][column] for eps in CERTIFIED] for s in per_seed]
        clean = [s["versus"][min(CERTIFIED)]["clean"][0] for s in per_seed]
        note = "" if what == "certified" else (
            "; proVAE's certified ELBO minus the VAE's attacked ELBO: " + "; ".join(
                ", ".join(f"{s['versus'][eps]['pro_certified_minus_vae_attacked']:+.1f}" for eps in CERTIFIED)
                for s in per_seed))
        out.append((f"proVAE's {what} ELBO{' (CROWN)' if what == 'certified' else ''} is above the standard VAE's "
                    f"at every eps ({', '.join(map(str, CERTIFIED))})", verdict([_above(p) for p in per]),
                    "proVAE minus VAE on the same points (nats, mean and 95% interval) per eps, per seed: "
                    + "; ".join(_steps(p, 1) for p in per)
                    + f"; the clean cost (proVAE minus VAE clean ELBO): {_fmt(clean, 1)} nats{note}"))
    active = [s["latent"][PROVAE]["active"] for s in per_seed]
    latent = per_seed[0]["latent"][PROVAE]["latent"]
    out.append(("proVAE keeps a latent code (at least half its latent dimensions active: Var(mu) / E[sigma^2] > 1), "
                "so its certificate is not bought by ignoring the input",
                verdict([a >= latent / 2 for a in active]),
                f"active dimensions per seed: {', '.join(map(str, active))} of {latent} (mean KL "
                f"{_fmt([s['latent'][PROVAE]['kl'] for s in per_seed], 1)} nats, against "
                f"{_fmt([s['latent'][VAE]['kl'] for s in per_seed], 1)} for the VAE)"))
    lip = [s["lipschitz"] for s in per_seed]
    out.append((f"the Lipschitz VAE is not collapsed (reconstructions of test digits of different classes a median "
                f"at least {UTILITY:g} apart in L2), so its certified margin is not trivially true",
                verdict([not v["collapsed"] for v in lip]),
                f"median distance between their reconstructions {_fmt([v['reconstructions'] for v in lip])}, "
                f"between the images {_fmt([v['images'] for v in lip])}; certified margin at r = 4 (median) "
                f"{_fmt([v['certified_margin'] for v in lip], 3)}"))
    return out


def render(per_seed: list[dict], seeds: list[int], settings: dict, seconds: float) -> str:
    schedule, lip = per_seed[0]["schedule"], [s["lipschitz"] for s in per_seed]
    lines = ["# VAE robustness on MNIST: reproduction report", "",
             "Camuto et al., *Towards a Theoretical Understanding of the Robustness of Variational Autoencoders* "
             "(AISTATS 2021): r-robustness margins; Condessa & Kolter, *Provably robust deep generative models* "
             "(2020): a certified ELBO and proVAE. The bound algebra and proVAE's schedule are derived in the notes, "
             "not taken from the papers.", "",
             f"Written by `{settings['command']}` on {settings['device']} ({settings['threads']} threads; this "
             f"invocation {seconds / 60:.1f} min, reusing stored runs and weights); seeds "
             f"{', '.join(map(str, seeds))} (recipe and evaluation seed). Values are mean ± standard deviation over "
             f"seeds. Margins: cards {', '.join(f'`{c}`' for c in MARGINS.values())} (one r for every model) on "
             f"{settings['n_margin']} test points; certified ELBOs on {settings['n_certified']} (CROWN costs about "
             f"half a second a point here); latent usage, the ELBO's spread and the Lipschitz VAE on "
             f"{settings['n_elbo']}.",
             "", "## Claims", "", "Each claim is decided per seed: PASS in every seed, FAIL in none, MIXED "
             "otherwise, NOT RESOLVED where in some seed its interval crosses the threshold. Differences are "
             "decided by 95% intervals over the points, so a tie is not growth.", ""]
    for claim, holds, statistic in claims(per_seed):
        lines.append(f"- **{VERDICT_WORDS[holds]}**: {claim}. {statistic}.")
    lines += ["", "## Margins (L2, input space)", "",
              "`margin_est`: median empirical margin (the smallest radius at which a max-damage attack was shown to "
              "break the point, by bisection; an upper bound on the true margin); `margin_low`: the largest radius "
              "not broken. `margin_bound`: median first-order margin, from the Clopper-Pearson lower bound `p0_lower` "
              "on p0 (an estimate, not a certificate: the encoder is linearised). `at cap`: share of points whose "
              "every draw stayed within r, so the bound is set by the number of draws. `censored`: share not broken "
              "even at the search's end; where more than half are, the median is only a lower bound (marked ≥). "
              "`violation`: share of uncensored points whose first-order margin exceeds the attack's.", "",
              "| r | model | beta | clean ELBO | KL | active dims | p0 | p0_lower | at cap (%) | margin_low | "
              "margin_est | censored (%) | margin_bound | violation (%) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in MARGINS:
        for family, models in FAMILIES.items():
            for beta, card_id in models.items():
                m = [s["margins"][r][card_id] for s in per_seed]
                lat = [s["latent"][card_id] for s in per_seed]
                at_least = "≥ " if any(v["margin_est_censored"] for v in m) else ""
                lines.append(f"| {r:g} | {family} | {beta} | {_col(m, 'clean_elbo', 1)} | {_col(lat, 'kl', 1)} | "
                             f"{_col(lat, 'active', 1)} | {_col(m, 'p0', 3)} | {_col(m, 'p0_lower', 3)} | "
                             f"{_col(m, 'at_cap', 0, 100)} | {_col(m, 'margin_low', 3)} | "
                             f"{at_least}{_col(m, 'margin_est', 3)} | {_col(m, 'censored', 0, 100)} | "
                             f"{_col(m, 'margin_bound', 4)} | {_col(m, 'violation', 1, 100)} |")
    surrogate = {k: [s["surrogate"][k] for s in per_seed] for k in (VAE, PROVAE)}
    lines += ["", "## Certified ELBO (nats, L-inf)", "",
              "What is certified is the ELBO with the model's 8 noise vectors, shared by every image (common "
              "random numbers), not the ELBO's expectation: a bound on that deterministic 8-draw estimate for every "
              "input in the ball. Its own Monte Carlo spread, measured against 32 other sets of 8 draws on the same "
              "points: one point's 8-draw ELBO varies by "
              + ", ".join(f"{_fmt([v['point_sd'] for v in surrogate[k]], 1)} (sd, median over points) for {k}"
                          for k in surrogate)
              + "; the mean over the points by "
              + ", ".join(f"{_fmt([v['mean_sd'] for v in surrogate[k]], 2)}" for k in surrogate)
              + ", and the shared set sits "
              + ", ".join(f"{_fmt([v['offset'] for v in surrogate[k]], 2)}" for k in surrogate)
              + " nats from the mean of the sets.", "",
              "Attacked: ELBO-lowering PGD-40. Certified: CROWN (linear bound propagation, the family's default) and "
              "IBP (interval bounds, what proVAE trains with) through encoder and decoder with the shared noise "
              "vectors. Drop ratio: (clean - certified) / (clean - attacked), 1 for a certificate as tight as the "
              "attack.", "",
              "| model | eps | clean | attacked | certified (CROWN) | drop ratio (CROWN) | certified (IBP) | "
              "drop ratio (IBP) | seconds (CROWN / IBP run) |", "|---|---|---|---|---|---|---|---|---|"]
    for card_id in (VAE, PROVAE):
        for eps in CERTIFIED:
            c = {b: [s["certified"][card_id][eps][b] for s in per_seed] for b in BOUNDS}
            crown, ibp = c["crown"], c["ibp"]
            lines.append(f"| {card_id} | {eps} | {_col(crown, 'clean', 1)} | {_col(crown, 'attacked', 1)} | "
                         f"{_col(crown, 'certified', 1)} | {_col(crown, 'drop_ratio')} | {_col(ibp, 'certified', 1)} | "
                         f"{_col(ibp, 'drop_ratio', 1)} | {_col(crown, 'seconds', 0)} / {_col(ibp, 'seconds', 0)} |")
    lines += ["", f"proVAE's schedule (card `{PROVAE}`): the clean ELBO alone first, then eps and the certified term's "
              f"weight ramped, then held at the training eps 0.02. Weighted by the learning rate, eps averages "
              f"{schedule['eps']:.4f} and the certified term's weight {schedule['certified_weight']:.3f}; "
              f"{100 * schedule['held']:.0f}% of the training (by learning rate) is at eps 0.02, where the claims "
              "above are read first.", "",
              "## Lipschitz VAE", "",
              f"`{LIPSCHITZ}`: certified r-robustness margin at r = 4 (`{LIPSCHITZ_MARGIN}`, a rigorous bound from "
              f"global Lipschitz constants) beside the distances it has to be read against. A model whose "
              f"reconstructions of different digits nearly coincide is collapsed, and any radius is certified for it.",
              "", "| clean ELBO | certified margin (median) | points certified (%) | reconstructions of different "
              "digits (median L2) | the images (median L2) | collapsed |", "|---|---|---|---|---|---|",
              f"| {_col(lip, 'clean_elbo', 1)} | {_col(lip, 'certified_margin', 3)} | "
              f"{_col(lip, 'certified_nonzero', 0, 100)} | {_col(lip, 'reconstructions')} | {_col(lip, 'images')} | "
              f"{', '.join('yes' if v['collapsed'] else 'no' for v in lip)} |",
              "", "## Per-seed values", "", "```", *(f"seed {seed}: {s}" for seed, s in zip(seeds, per_seed)),
              "```", ""]
    return "\n".join(lines)


def build_report(seeds: list[int], out: Path, work: Path, *, n_margin: int, n_elbo: int, n_certified: int,
                 device: str, command: str) -> Path:
    if len(seeds) < 2:
        raise BenchError("a reproduction report needs at least 2 seeds", "pass e.g. --seed 0 --seed 1")
    start = time.perf_counter()
    per_seed = [run_seed(seed, work, n_margin=n_margin, n_elbo=n_elbo, n_certified=n_certified, device=device)
                for seed in seeds]
    settings = {"command": command, "n_margin": n_margin, "n_elbo": n_elbo, "n_certified": n_certified,
                "device": device, "threads": torch.get_num_threads()}
    return write_report(out, render(per_seed, seeds, settings, time.perf_counter() - start))
