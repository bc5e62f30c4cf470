"""Reproduction reports for learned perturbation sets on MNIST-RTS (Wong & Kolter, 2021), CPU-sized.

For every seed: train the setting's CVAE and its affine-warp twin (recipe seed = seed), read the latent
statistics, measure set quality in-family and on held-out families for both, train the classifier rows
with the same seed, then evaluate each row on clean, perturbed (in-family and held-out), the default
latent attack ensemble and the paper's latent PGD at p50/p75/max and latent-smoothing certification;
check every defended row's ensemble number against the paper's attack, a stronger latent PGD, a
gradient-free bound, a transfer attack and twice its own budget; and certify the smoothing row over a
range of radii next to the ensemble's robust accuracy. Everything goes through ``bench.evaluate`` into one
results folder, so the report resumes. It gives mean and standard deviation over seeds, every per-seed
value, and checks the paper's claims against the numbers, stating the ones that fail.

Two settings share the code: ``mnist-rts``, the paper's perturbation, and ``mnist-rts-mild``, the
milder ranges of the pilot in the reference notes.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.cards import locate, read_card
from bench.errors import BenchError, require
from bench.files import atomic_write
from bench.reports import UNRESOLVED, VERDICT_WORDS, SeedRunner, Verdict, mean_sd, paired, verdict, write_report
from bench.stats import clopper_pearson

if TYPE_CHECKING:
    import pandas as pd

ADVERSARIAL = "CVAE adversarial training"
ABLATION = "CVAE adversarial training, latent APGD"  # not a row of the paper: training against the stronger attack
REAL = "real RTS augmentation"
SMOOTHING = "latent-smoothing training"
QUALITY = {("in-family", "p50"): "set-quality-p50", ("in-family", "p75"): "set-quality-p75",
           ("in-family", "max"): "set-quality-max", ("perturbed-shear", "max"): "set-quality-shear-max",
           ("perturbed-thicken", "max"): "set-quality-thicken-max"}  # (pairs, eps) -> threat card
QUALITY_AFFINE = {key: QUALITY[key] for key in (("in-family", "max"), ("perturbed-shear", "max"),
                                                 ("perturbed-thicken", "max"))}
QUALITY_METRICS = ("encoder_ae", "pgd_ae", "eae", "recon", "kl", "identity")
QUALITY_BATCH = 250  # pairs per shard, as the quality runs of earlier reports used
CHECKS = ("paper", "strong", "random", "transfer")  # attacks beside the default ensemble, on the checks' points
GRADIENT = ("ensemble", "paper", "strong")  # the gradient attacks; random and transfer are not
EXAMPLES = 8  # points per row in the report's pictures of adversarial examples
MATERIAL = 0.03  # a stronger attack finding 3 points more than the default ensemble is flagged
PAIRED = ("clean", "RTS (in-family)", "shear (held out)", "thicken (held out)", "robust @p50")  # compared per point

CONVENTIONS = [
    "Robust accuracy counts a point only if it is classified correctly both clean and under the attack. The "
    "authors' code counts adversarial correctness alone, so its numbers are higher than ours by at most the "
    "clean error.",
    "The latent ball is projected per example, as in the paper's definition ‖u‖₂ ≤ ε. The authors' code calls "
    "`renorm` over each latent coordinate across the batch; at batch 128 and latent 512 that lets examples "
    "reach about twice the stated radius, so their CIFAR numbers are not comparable with ours at equal "
    "nominal ε.",
    "Set-quality errors are per-pixel mean squared errors (the paper's MNIST table uses binary cross-entropy); "
    "PGD AE descends for 100 steps with a step decaying from ε/10 to ε/1000 (the reference code's fixed ε/20 "
    "left PGD AE higher at ε = max than at p75).",
    "RTS pairs rotate and scale about the image centre, then translate in output pixels (as torchvision's "
    "RandomAffine), so a point moves at most the stated translation along each axis.",
]


@dataclass(frozen=True)
class Setting:
    """One reproduced configuration: its perturbation (in words), its CVAE cards and the cards it runs."""

    name: str
    perturbation: str
    cvae: str
    cvae_affine: str
    rows: dict[str, str]
    accuracy: dict[str, str]
    attacks: dict[str, str]  # the default latent attack ensemble: the ranking columns
    paper: dict[str, str]  # the paper's latent PGD at the same radii
    checks: dict[str, str]
    worst: str  # the ensemble card of the default and the checks at p50: the per-point worst case
    certify: str
    curve: str


def _setting(name: str, perturbation: str, suffix: str) -> Setting:
    """The cards of a setting follow one naming scheme; ``suffix`` tells the settings apart."""
    return Setting(
        name=name, perturbation=perturbation, cvae=f"mnist-rts{suffix}-cvae",
        cvae_affine=f"mnist-rts{suffix}-affine-cvae",
        rows={"standard": "mnist42-cnn-standard",
              REAL: f"mnist42-cnn-rts{suffix}-aug",
              "CVAE augmentation": f"mnist42-cnn-cvae{suffix}-aug",
              ADVERSARIAL: f"mnist42-cnn-cvae{suffix}-adv",
              SMOOTHING: f"mnist42-cnn-cvae{suffix}-smoothing",
              ABLATION: f"mnist42-cnn-cvae{suffix}-adv-apgd"},
        accuracy={"clean": "clean", "RTS (in-family)": f"perturbed-rts{suffix}",
                  "shear (held out)": "perturbed-shear", "thicken (held out)": "perturbed-thicken"},
        attacks={f"robust @{p}": f"learned-cvae-rts{suffix}-{p}" for p in ("p50", "p75", "max")},
        paper={f"paper @{p}": f"learned-cvae-rts{suffix}-{p}-paper" for p in ("p50", "p75", "max")},
        checks={check: f"learned-cvae-rts{suffix}-p50-{check}" for check in CHECKS},
        worst=f"learned-cvae-rts{suffix}-p50-worst", certify=f"latent-smoothing-rts{suffix}",
        curve=f"latent-smoothing-rts{suffix}-curve")


SETTINGS = {s.name: s for s in (
    _setting("mnist-rts", "the paper's RTS perturbation (±45°, scale 0.7–1.3, ±7 px)", ""),
    _setting("mnist-rts-mild", "the pilot's milder RTS perturbation (±30°, scale 0.8–1.2, ±4 px), not the "
             "paper's (±45°, 0.7–1.3, ±7 px; see the `mnist-rts` report)", "-mild"),
)}


def setting(name: str) -> Setting:
    if name not in SETTINGS:
        raise BenchError(f"unknown report setting {name!r}", f"choose one of: {', '.join(SETTINGS)}")
    return SETTINGS[name]


class _Runner(SeedRunner):
    """One seed's runs, with the set-quality metrics of a CVAE."""

    def quality(self, cvae: Path, cards: dict, n: int) -> dict:
        return {key: {m: self.run(cvae, threat, n, QUALITY_BATCH).metrics[m].value for m in QUALITY_METRICS}
                for key, threat in cards.items()}


def run_seed(setting: Setting, seed: int, work: Path, *, n_eval: int, n_quality: int, n_attack: int,
             n_certify: int, n_check: int, device: str) -> dict:
    """Train and evaluate everything for one seed; every result also lands in ``work/results``."""
    from bench.families.learned_sets.sets import cvae_card, latent_stats
    from bench.training import ensure_trained
    from bench.threats import ThreatCard

    runner = _Runner(seed, work, device)
    cvae_path = runner.card("model", setting.cvae)
    affine_path = runner.card("model", setting.cvae_affine)
    card = cvae_card(str(cvae_path), "report")
    ensure_trained(card, device=device)
    stats = latent_stats(card, device=device)
    out = {"stats": stats.summary(), "quality": runner.quality(cvae_path, QUALITY, n_quality),
           "quality_affine": runner.quality(affine_path, QUALITY_AFFINE, n_quality)}
    models = {row: runner.card("model", model_id, cvae=cvae_path) for row, model_id in setting.rows.items()}
    threats = {name: runner.card("threat", threat, cvae=cvae_path) for name, threat in
               {**setting.accuracy, **setting.attacks, **setting.paper, "certified": setting.certify}.items()}
    out["rows"], out["points"] = {}, {}
    for row, model_path in models.items():
        values: dict[str, float] = {}
        out["points"][row] = {}
        for name, threat in threats.items():
            n = n_attack if name in {**setting.attacks, **setting.paper} else n_certify if name == "certified" \
                else n_eval
            summary = runner.run(model_path, threat, n)
            values[name] = summary.metrics[summary.headline].value  # clean, perturbed, robust or certified accuracy
            if name in PAIRED:
                out["points"][row][name] = points(runner, summary)
            if name == "certified":
                values["smoothed"] = summary.smoothed_acc  # abstentions count as wrong
        out["rows"][row] = values
    checks = {name: runner.card("threat", threat, cvae=cvae_path, source=models["standard"])
              for name, threat in setting.checks.items()}
    seeded = {setting.attacks["robust @p50"]: threats["robust @p50"],
              **{setting.checks[name]: path for name, path in checks.items()}}
    default = read_card(locate("threat", setting.attacks["robust @p50"]))["params"]
    worst = runner.card("threat", setting.worst, members=[
        seeded[member] for member in read_card(locate("threat", setting.worst))["params"]["members"]])
    out["checks"] = {}
    for row in setting.rows:
        if row == "standard":
            continue
        runs = {"ensemble": runner.run(models[row], threats["robust @p50"], n_check, save_adv=True)}
        runs |= {name: runner.run(models[row], threat, n_check) for name, threat in checks.items()}
        robust = {name: runner.rows(s.run_id).set_index("index")["robust"] for name, s in runs.items()}
        worst_run = runner.run(models[row], worst, n_check)
        out["checks"][row] = {"robust": {name: s.robust_acc for name, s in runs.items()},
                              "seconds": {name: s.seconds / s.n for name, s in runs.items()},
                              "convergence": runner.convergence(models[row], threats["robust @p50"], runs["ensemble"],
                                                                n_check),
                              "beaten": {name: int((robust["ensemble"] & ~robust[name]).sum())
                                         for name in robust if name != "ensemble"},
                              "worst": worst_run.robust_acc, "worst_points": points(runner, worst_run),
                              "combined": worst_case(robust), "examples": examples(runner, runs["ensemble"])}
    curve = runner.run(models[SMOOTHING], runner.card("threat", setting.curve, cvae=cvae_path), n_certify)
    cert_rows = runner.rows(curve.run_id)
    radii = _curve_radii(stats)
    empirical = [runner.run(models[SMOOTHING], ThreatCard(
        id=f"learned-cvae-r{r:.2f}-seed{seed}", family="learned-cvae", datasets=["mnist42"],
        params={**default, "cvae": str(cvae_path), "eps": float(r)}), n_certify).robust_acc if r > 0
        else curve.clean_acc for r in radii]
    smoothing = read_card(locate("threat", setting.certify))["params"]
    attacked = [runner.run(models[SMOOTHING], ThreatCard(
        id=f"latent-smoothing-attack-r{r:.2f}-seed{seed}", family="latent-smoothing-attack", datasets=["mnist42"],
        params={"cvae": str(cvae_path), "eps": float(r), "sigma": smoothing["sigma"], "n0": smoothing["n0"],
                "n": smoothing["n"], "alpha": smoothing["alpha"]}), n_certify).robust_acc if r > 0
        else float((cert_rows.smoothed_correct).mean()) for r in radii]
    out["curve"] = {"radii": radii, "attacked": attacked,
                    "certified": [float((cert_rows.smoothed_correct & (cert_rows.cert_radius >= r)).mean())
                                  for r in radii],
                    "empirical": empirical, "n": read_card(locate("threat", setting.curve))["params"]["n"],
                    "markers": {q: stats.resolve(q) for q in ("p25", "p50", "p75")}}
    return out


def examples(runner: _Runner, summary, k: int = EXAMPLES) -> dict[str, list]:
    """The first ``k`` points a run's model got right clean: image, adversarial input (``--save-adv``), label and
    prediction under the attack, for the report's pictures."""
    from bench.adversarial import saved_inputs
    from bench.data import load_dataset

    index, x_adv = saved_inputs(summary.run_id, runner.results)
    rows = runner.rows(summary.run_id).set_index("index").loc[index.numpy()]
    chosen = [i for i, right in enumerate(rows["clean_correct"].astype(bool)) if right][:k]
    data = load_dataset(summary.dataset, "test")
    return {"x": data.x[index[chosen]].tolist(), "x_adv": x_adv[chosen].tolist(),
            "label": rows["label"].iloc[chosen].tolist(), "adv_pred": rows["adv_pred"].iloc[chosen].tolist()}


def plot_examples(path: Path, examples_by_row: dict[str, dict], title: str) -> Path:
    """Per training row, its points (top) and the default attack's adversarial inputs (below), labelled with the
    class and the prediction under attack (red where the attack broke the point): what the learned threat asks."""
    matplotlib = require("matplotlib", "the report's pictures", "pip install 'bench[report]'")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", "the report's pictures", "pip install 'bench[report]'")
    import numpy as np

    k = max(len(e["label"]) for e in examples_by_row.values())
    figure, axes = plt.subplots(2 * len(examples_by_row), k, figsize=(1.1 * k, 2.3 * len(examples_by_row)),
                                squeeze=False)
    for r, (row, e) in enumerate(examples_by_row.items()):
        for j in range(k):
            for line, key in ((2 * r, "x"), (2 * r + 1, "x_adv")):
                ax = axes[line][j]
                ax.set_xticks([]), ax.set_yticks([])
                if j >= len(e["label"]):
                    ax.axis("off")
                    continue
                ax.imshow(np.asarray(e[key][j]).squeeze(0), cmap="gray", vmin=0, vmax=1)
                broken = e["adv_pred"][j] != e["label"][j]
                ax.set_title(f"{e['label'][j]}" if key == "x" else f"→ {e['adv_pred'][j]}", fontsize=8,
                             color="red" if key == "x_adv" and broken else "black")
            axes[2 * r][0].set_ylabel(row, fontsize=8)
            axes[2 * r + 1][0].set_ylabel("attacked", fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=80, metadata={"Software": None}))
    plt.close(figure)
    return path


def points(runner: _Runner, summary) -> dict[int, bool]:
    """A run's per-point outcome under its headline (right clean, under the perturbation or attack), by point."""
    rows = runner.rows(summary.run_id)
    return dict(zip(rows["index"].tolist(), rows[summary.specs[summary.headline].column].astype(bool).tolist()))


def worst_case(robust: dict[str, pd.Series]) -> float:
    """Robust accuracy when each point faces every attack, from the attacks' own runs: it counts only if it
    survives them all. The report checks the ensemble card's number against it (they must be equal). The
    attacks' rows are matched by evaluation point, so a run that covers other points is an error."""
    series = list(robust.values())
    if any(set(s.index) != set(series[0].index) for s in series):
        raise BenchError("the attack checks of one row ran on different evaluation points",
                         "rerun the report with one --n-check for every attack")
    survived = series[0].copy()
    for s in series[1:]:
        survived &= s.loc[survived.index]
    return float(survived.mean())


def _curve_radii(stats) -> list[float]:
    """0, every 0.5 up to p75, and the quartiles of the set's statistics."""
    top = stats.resolve("p75")
    return sorted({0.0, *np.arange(0.5, top, 0.5).round(2).tolist(), *(round(stats.resolve(q), 3)
                                                                      for q in ("p25", "p50", "p75"))})


def curve_columns(per_seed: list[dict]) -> list[tuple[str, float, list[int]]]:
    """The certificate curve's columns across seeds, as (label, mean radius, index into each seed's curve):
    every grid radius all seeds share, and p25 / p50 / p75 at each seed's own value. Each seed's statistics
    give it its own quartiles and grid length, so the seeds' curves do not line up by position."""
    curves = [s["curve"] for s in per_seed]
    marks = [{round(v, 3) for v in c["markers"].values()} for c in curves]
    shared = set.intersection(*({r for r in c["radii"] if r not in m} for c, m in zip(curves, marks)))
    columns = [(f"{r:.2f}", r, [c["radii"].index(r) for c in curves]) for r in shared]
    for name in ("p25", "p50", "p75"):
        at = statistics.fmean(c["markers"][name] for c in curves)
        columns.append((f"{name} ({at:.2f})", at, [c["radii"].index(round(c["markers"][name], 3)) for c in curves]))
    return sorted(columns, key=lambda column: column[1])


def _fmt(values: list[float], percent: bool = True, digits: int = 1) -> str:
    return mean_sd(values, 100 if percent else 1, digits)


def check_flags(robust: dict[str, float], beaten: dict[str, int]) -> list[str]:
    """What makes a row's gradient numbers untrustworthy: a gradient-free or transfer attack (random sampling,
    transfer) breaking more points than a gradient attack (the default ensemble, the paper's latent PGD, the
    10 x 200-step latent PGD), the sign of masked gradients; or the 10 x 200-step attack finding materially
    more than the default (the default not converged). ``beaten`` counts the points an attack breaks that the
    default ensemble leaves robust."""
    flags = [f"{name} beats {gradient} ({robust[name]:.1%} vs {robust[gradient]:.1%}"
             + (f"; it breaks {beaten[name]} point(s) the ensemble leaves robust)" if gradient == "ensemble" else ")")
             for name in ("random", "transfer") for gradient in GRADIENT if robust[name] < robust[gradient]]
    if robust["strong"] < robust["ensemble"] - MATERIAL:
        flags.append(f"the 10 x 200-step latent PGD finds {robust['ensemble'] - robust['strong']:.1%} more than "
                     "the default ensemble")
    return flags


def _per_seed(tests: list, statistic) -> str:
    """Each seed's statistic, labelled."""
    return "; ".join(f"seed {i}: {statistic(t)}" for i, t in enumerate(tests))


def _claims(setting: Setting, per_seed: list[dict]) -> list[tuple[str, Verdict, str]]:
    """(claim, verdict, statistic) for the paper's claims and the checks of the attacks, decided per seed
    (``bench.reports.verdict``). Comparisons of rows are paired on the same points: their difference with a 95%
    interval and McNemar's exact p, and a seed whose interval crosses the threshold leaves the claim not
    resolved; robust accuracies come with per-seed Clopper-Pearson intervals."""
    rows = [r for r in per_seed[0]["rows"] if r != ABLATION]  # the paper's rows

    def q(pairs: str, eps: str, metric: str, key: str = "quality") -> float:
        return statistics.fmean(s[key][(pairs, eps)][metric] for s in per_seed)

    def best_other(among: list[str], score) -> str:
        """The row other than CVAE adversarial training with the highest ``score(row)``."""
        return max((r for r in among if r != ADVERSARIAL), key=score)

    def cp(points: dict) -> str:
        k, n = sum(points.values()), len(points)
        low, high = clopper_pearson(k, n)
        return f"{k / n:.1%} [{low:.1%}, {high:.1%}]"

    claims: list[tuple[str, Verdict, str]] = []
    rivals = [best_other(rows, lambda r, s=s: s["rows"][r]["robust @p50"]) for s in per_seed]
    tests = [paired(s["points"][ADVERSARIAL]["robust @p50"], s["points"][rival]["robust @p50"])
             for s, rival in zip(per_seed, rivals)]
    claims.append(("CVAE adversarial training has the highest learned-set robust accuracy at p50 (the default "
                   "ensemble; paired against the best other row)", verdict([t.above(0) for t in tests]),
                   _per_seed(list(zip(per_seed, rivals, tests)), lambda x: (
                       f"{cp(x[0]['points'][ADVERSARIAL]['robust @p50'])} vs {x[1]} "
                       f"{cp(x[0]['points'][x[1]]['robust @p50'])}, {x[2]}"))))
    defended = [r for r in per_seed[0]["checks"] if r != ABLATION]
    rivals = [best_other(defended, lambda r, s=s: s["checks"][r]["worst"]) for s in per_seed]
    tests = [paired(s["checks"][ADVERSARIAL]["worst_points"], s["checks"][rival]["worst_points"])
             for s, rival in zip(per_seed, rivals)]
    claims.append(("it stays the most robust row at p50 when each point must survive every attack of the checks "
                   "(the ensemble, the paper's latent PGD, the 10 x 200-step latent PGD and transfer)",
                   verdict([t.above(0) for t in tests]),
                   _per_seed(list(zip(rivals, tests)), lambda x: f"vs {x[0]}: {x[1]}")))
    claims.append((f"the worst case of the ensemble card `{setting.worst}` (each attack on the survivors of the "
                   "earlier ones) equals the attacks' own runs combined point by point, for every row",
                   verdict([all(c["worst"] == c["combined"] for c in s["checks"].values()) for s in per_seed]),
                   "a consistency check of the suite, not a claim of the paper"))
    tests = [paired(s["points"]["standard"]["clean"], s["points"][ADVERSARIAL]["clean"]) for s in per_seed]
    claims.append(("its clean accuracy is within 3 points of standard training",
                   verdict([t.below(0.03) for t in tests]),
                   "standard minus CVAE-adversarial, " + _per_seed(tests, str)))
    for column in ("RTS (in-family)", "shear (held out)", "thicken (held out)"):
        tests = [paired(s["points"][ADVERSARIAL][column], s["points"][REAL][column]) for s in per_seed]
        claims.append((f"CVAE adversarial training beats training on real perturbations on {column} data (the "
                       "paper's claim on perturbed data)", verdict([t.above(0) for t in tests]), _per_seed(tests, str)))
    claims.append(("set quality is ordered PGD AE < encoder AE < EAE in-family at p50, p75 and max",
                   verdict([all(s["quality"][("in-family", e)]["pgd_ae"] < s["quality"][("in-family", e)]["encoder_ae"]
                                < s["quality"][("in-family", e)]["eae"] for e in ("p50", "p75", "max"))
                            for s in per_seed]), "means over the set-quality pairs"))
    claims.append(("PGD AE never rises as the ball grows (p50 ≥ p75 ≥ max)",
                   verdict([s["quality"][("in-family", "p50")]["pgd_ae"] >= s["quality"][("in-family", "p75")]["pgd_ae"]
                            >= s["quality"][("in-family", "max")]["pgd_ae"] for s in per_seed]), ""))
    for generator, key in (("similarity", "quality"), ("affine", "quality_affine")):
        in_family = q("in-family", "max", "pgd_ae", key)
        relative = in_family / q("in-family", "max", "identity", key)
        for family in ("perturbed-shear", "perturbed-thicken"):
            held_out = q(family, "max", "pgd_ae", key)
            share = held_out / q(family, "max", "identity", key)

            def ratio(s: dict, metric: str) -> float:
                return s[key][(family, "max")][metric] / s[key][("in-family", "max")][metric]

            claims.append((f"{generator} warps, {family}: PGD AE clearly above in-family (at least 2x), at eps = max",
                           verdict([ratio(s, "pgd_ae") >= 2 for s in per_seed]),
                           f"{held_out:.4f} vs {in_family:.4f}, {held_out / in_family:.1f}x (mean of seeds)"))
            claims.append((f"{generator} warps, {family}: the share of the perturbation left unexplained (PGD AE / "
                           "identity error) is at least 2x the in-family share",
                           verdict([ratio(s, "pgd_ae") / ratio(s, "identity") >= 2 for s in per_seed]),
                           f"{share:.0%} vs {relative:.0%} (mean of seeds)"))
    checks = [list(s["checks"].values()) for s in per_seed]
    drops = [c["convergence"]["drop"] for seed in checks for c in seed]
    claims.append(("twice the default ensemble's budget (steps and samples) moves no defended row by more than 1 "
                   "point", verdict([all(c["convergence"]["verdict"] == "converged" for c in seed) or
                                     (UNRESOLVED if all(c["convergence"]["verdict"] != "not converged" for c in seed)
                                      else False) for seed in checks]),
                   f"largest drop {max(drops) * 100:.1f} points; verdicts: "
                   + ", ".join(sorted({c["convergence"]["verdict"] for seed in checks for c in seed}))))
    cost = {name: statistics.fmean(c["seconds"][name] for seed in checks for c in seed)
            for name in ("ensemble", "paper", "strong")}
    claims.append(("the default ensemble costs at most a quarter of the 10 x 200-step latent PGD",
                   verdict([statistics.fmean(c["seconds"]["ensemble"] for c in seed)
                            <= statistics.fmean(c["seconds"]["strong"] for c in seed) / 4 for seed in checks]),
                   f"{cost['ensemble']:.2f} s per point against {cost['strong']:.2f} s ({cost['paper']:.2f} s for the "
                   "paper's attack), CPU, mean of rows and seeds"))
    over = [[(r, c, a) for r, c, a in zip(s["curve"]["radii"], s["curve"]["certified"], s["curve"]["attacked"])
             if c > a] for s in per_seed]
    claims.append(("the certificate lies under the smoothed classifier's own accuracy under attack (SmoothAdv) at "
                   "every radius of the curve", verdict([not o for o in over]),
                   "; ".join(f"seed {i}: at {r:.2f} certified {c:.1%} > attacked {a:.1%}" for i, o in enumerate(over)
                             for r, c, a in o) or "a consistency check of the certificate against an attack"))
    flagged = [[f"{row}: {flag}" for row, c in s["checks"].items() for flag in check_flags(c["robust"], c["beaten"])]
               for s in per_seed]
    claims.append(("no gradient attack is beaten by a gradient-free or transfer attack on a defended row, and "
                   "the 10 x 200-step latent PGD finds no more than the default ensemble",
                   verdict([not f for f in flagged]),
                   "; ".join(f"seed {i}: {flag}" for i, f in enumerate(flagged) for flag in f) or "every check agrees"))
    return claims


def plot_certificates(path: Path, per_seed: list[dict], setting_name: str) -> Path:
    """Certified accuracy of the smoothed classifier against radius, beside its accuracy under attack (SmoothAdv)
    and the robust accuracy of its base classifier (the default ensemble), mean over seeds, quartiles marked."""
    matplotlib = require("matplotlib", "the report's certificate plot", "pip install 'bench[report]'")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", "the report's certificate plot", "pip install 'bench[report]'")
    columns = curve_columns(per_seed)
    figure, axes = plt.subplots(figsize=(6, 3.6))
    for key, label in (("certified", "certified (smoothed classifier)"),
                       ("attacked", "SmoothAdv (smoothed classifier)"),
                       ("empirical", "latent attack ensemble (base classifier)")):
        values = [100 * statistics.fmean(s["curve"][key][i] for s, i in zip(per_seed, at)) for _, _, at in columns]
        axes.plot([radius for _, radius, _ in columns], values, marker="o", label=label)
    for name in ("p25", "p50", "p75"):
        at = statistics.fmean(s["curve"]["markers"][name] for s in per_seed)
        axes.axvline(at, color="grey", linestyle=":", linewidth=1)
        axes.text(at, 102, name, ha="center", fontsize=8)
    axes.set(xlabel="latent radius ‖u‖₂", ylabel="accuracy (%)", ylim=(0, 108),
             title=f"{setting_name}: latent-smoothing training, mean of {len(per_seed)} seeds")
    axes.legend(fontsize=8)
    figure.tight_layout()
    with matplotlib.rc_context({"svg.hashsalt": setting_name}):  # no random ids or date: same numbers, same file
        atomic_write(path, lambda tmp: figure.savefig(tmp, format="svg", metadata={"Date": None}))
    plt.close(figure)
    return path


def render(setting: Setting, per_seed: list[dict], seeds: list[int], settings: dict, seconds: float) -> str:
    lines = [f"# Learned perturbation sets on MNIST-RTS: reproduction report (setting `{setting.name}`)", "",
             "Generated by `" + settings["command"] + "`; do not edit by hand.", "",
             "Wong & Kolter, *Learning perturbation sets for robust machine learning* (ICLR 2021), at CPU size: "
             f"MNIST padded to 42x42, {setting.perturbation}, the cards `{setting.cvae}` (similarity warps; "
             f"`{setting.cvae_affine}` with affine warps for set quality) and `" + "`, `".join(setting.rows.values())
             + "` (10k training images each), "
             f"seeds {', '.join(map(str, seeds))} (the seed sets every recipe, pair draw and attack). "
             "Cells are mean ± sample standard deviation over the seeds; per-seed values follow.", "",
             f"Evaluation points (fixed subset of the MNIST test split): {settings['n_eval']} for clean and perturbed "
             f"accuracy; {settings['n_quality']} for set quality; {settings['n_attack']} for the latent attacks; "
             f"{settings['n_check']} for the attack checks; {settings['n_certify']} for certification. The command "
             f"that wrote this report ran {seconds / 60:.1f} min on {settings['device']} with "
             f"{settings['threads']} CPU threads, reusing every weight, statistic and run it found cached.", "",
             "## Conventions", ""]
    lines += [f"- {text}" for text in CONVENTIONS]
    lines += ["", "## Claims checked", ""]
    for claim, holds, detail in _claims(setting, per_seed):
        lines.append(f"- **{VERDICT_WORDS[holds]}**: {claim}" + (f" ({detail})" if detail else ""))
    lines += ["", "## Latent statistics of held-out pairs", "",
              "r = ‖(μ_q − μ_p)/σ_p‖₂ on the 1,000 validation images the CVAE never trained on, 5 pair draws each.", "",
              "| statistic | " + " | ".join(per_seed[0]["stats"]) + " |",
              "|---|" + "---|" * len(per_seed[0]["stats"])]
    lines.append("| value | " + " | ".join(_fmt([s["stats"][k] for s in per_seed], False, 0 if k == "n" else 2)
                                         for k in per_seed[0]["stats"]) + " |")
    metrics = list(QUALITY_METRICS)
    lines += ["", "## Set quality (per-pixel MSE; KL in nats)", "",
              "`pgd_ae / identity` is the share of the perturbation mse(x, x̃) that the set fails to explain. "
              "The affine rows use the twin CVAE whose warps can shear, so a held-out shear is not excluded by "
              "the generator's form.", "",
              "| generator | pairs | eps | " + " | ".join(metrics) + " | pgd_ae / identity |",
              "|---|---|---|" + "---|" * (len(metrics) + 1)]
    for generator, key, keys in (("similarity", "quality", QUALITY), ("affine", "quality_affine", QUALITY_AFFINE)):
        for pairs, eps in keys:
            values = [s[key][(pairs, eps)] for s in per_seed]
            cells = [_fmt([v[m] for v in values], False, 2 if m == "kl" else 4) for m in metrics]
            cells.append(_fmt([v["pgd_ae"] / v["identity"] for v in values], True, 0) + "%")
            lines.append(f"| {generator} | {pairs} | {eps} | " + " | ".join(cells) + " |")
    columns = [*setting.accuracy, *setting.attacks, *setting.paper, "smoothed", "certified"]
    smoothing = read_card(locate("threat", setting.certify))["params"]
    lines += ["", "## Classifiers (accuracy, %)", "",
              "Perturbed columns are accuracy on one seeded perturbed copy of each test image; `robust @` columns "
              f"are the default latent attack ensemble (card `{setting.attacks['robust @p50']}` and its p75 / max "
              "twins: latent APGD on cross-entropy, then on the targeted DLR loss, then 1,000 uniform samples) at "
              "the set's p50/p75/max, the ranking columns; `paper @` columns are the paper's latent PGD (50 steps "
              "of ε/20, one random start) at the same radii, kept to reproduce the paper; `smoothed` is the "
              f"accuracy of the latent-smoothed classifier (σ {smoothing['sigma']}, abstentions count as wrong) and "
              f"`certified` its certified accuracy at latent radius {smoothing['radius']} (card `{setting.certify}`: "
              f"n0 {smoothing['n0']}, n {smoothing['n']}, α {smoothing['alpha']}).", "",
              "| training | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for row in setting.rows:
        lines.append(f"| {row} | " + " | ".join(_fmt([s["rows"][row][c] for s in per_seed]) for c in columns) + " |")
    names = ["ensemble", *CHECKS]
    strong = read_card(locate("threat", setting.checks["strong"]))["params"]
    lines += ["", "## Is the default's number trustworthy? (robust accuracy at p50, %)", "",
              f"On {settings['n_check']} points per defended row: the default latent attack ensemble "
              f"(`{setting.attacks['robust @p50']}`), the paper's latent PGD (`{setting.checks['paper']}`, 50 "
              f"steps), a long latent PGD (card `{setting.checks['strong']}`: {strong['restarts']} restarts of "
              f"{strong['steps']} steps decaying from ε/4 to ε/{4 / strong['decay']:.0f}), the worst of 1,000 "
              f"uniform samples in the ball (`{setting.checks['random']}`, no gradients) and a transfer attack "
              f"crafted on the standard classifier (`{setting.checks['transfer']}`). `worst case` (card "
              f"`{setting.worst}`) counts a point only if it survives the ensemble, the paper's attack, the long "
              "attack and transfer (each attacks the points the earlier ones left standing): every attack gives an "
              "upper bound on a row's true robust accuracy, and this is the tightest here; more restarts may still "
              "find more, so compare rows under the same attacks, not with other tables. A row is flagged when a "
              "gradient-free or transfer attack beats a gradient attack (the sign of masked gradients: it is "
              "expected of the paper's weak attack, and is why it is not the default), or the long attack finds "
              f"more than {MATERIAL:.0%} beyond the default ensemble.", "",
              "`ensemble x2` is the drop of the ensemble's robust accuracy when its survivors are attacked again "
              "with twice its steps and samples (`bench run --check-convergence`), with each seed's verdict "
              "(converged: at most 1 point). The last line is the cost: CPU seconds per point of each attack's "
              "own run on these points.", "",
              "| training | " + " | ".join(names) + " | worst case | ensemble x2 | flags |",
              "|---|" + "---|" * (len(names) + 3)]
    for row in per_seed[0]["checks"]:
        checks = [s["checks"][row] for s in per_seed]
        flags = sorted({flag for c in checks for flag in check_flags(c["robust"], c["beaten"])})
        doubled = f"−{_fmt([c['convergence']['drop'] for c in checks])} (" + ", ".join(
            c["convergence"]["verdict"] for c in checks) + ")"
        lines.append(f"| {row} | " + " | ".join(_fmt([c["robust"][n] for c in checks]) for n in names)
                     + f" | {_fmt([c['worst'] for c in checks])} | {doubled} | {'; '.join(flags) or 'none'} |")
    every = [c for s in per_seed for c in s["checks"].values()]
    lines.append("| cost (s per point) | " + " | ".join(_fmt([c["seconds"][n] for c in every], False, 2) for n in names)
                 + " | | | |")
    curve, radius_columns = per_seed[0]["curve"], curve_columns(per_seed)
    lines += ["", "## Certificates over radius (latent-smoothing training, %)", "",
              f"Certified accuracy of the smoothed classifier (card `{setting.curve}`: n = {curve['n']:,} estimation "
              f"samples on {settings['n_certify']} points, so radii up to σ·Φ⁻¹(α^(1/n)) can be certified) beside "
              "the smoothed classifier's own accuracy under attack at the same radii (`latent-smoothing-attack`: "
              "SmoothAdv, PGD on the smoothed soft prediction, then the smoothed prediction at the point found with "
              f"n0 {smoothing['n0']}, n {smoothing['n']}: the certificate must lie under it) and the robust accuracy "
              "of its base classifier under the default latent attack ensemble (a different classifier, shown for "
              "scale). The p25 / p50 / p75 columns are at each "
              "seed's own quartile (their mean in brackets); the other radii are shared by every seed.", "",
              f"![certified and empirical accuracy over latent radius]({settings['plot']})", "",
              "| radius | " + " | ".join(label for label, _, _ in radius_columns) + " |",
              "|---|" + "---|" * len(radius_columns)]
    for key, label in (("certified", "certified"), ("attacked", "SmoothAdv on the smoothed classifier"),
                       ("empirical", "ensemble on the base classifier")):
        lines.append(f"| {label} | " + " | ".join(_fmt([s["curve"][key][i] for s, i in zip(per_seed, at)])
                                                 for _, _, at in radius_columns) + " |")
    if settings.get("examples"):
        lines += ["", f"## Adversarial examples (seed {seeds[0]})", "",
                  f"The first {EXAMPLES} points each defended row gets right clean (top) and the input the default "
                  "attack ensemble (`" + setting.attacks["robust @p50"] + "`) left them at (below; the prediction in "
                  "red where it broke the point), read back from the run's stored adversarial inputs (`--save-adv`). "
                  "Look for inputs that no longer show the digit they are labelled with: the learned ball is larger "
                  "than the real family (see the real-family columns).", "",
                  f"![adversarial examples per row]({settings['examples']})"]
    lines += ["", "## Per seed", ""]
    for seed, s in zip(seeds, per_seed):
        lines += [f"Seed {seed}:", "", "| training | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        lines += [f"| {row} | " + " | ".join(f"{100 * s['rows'][row][c]:.1f}" for c in columns) + " |"
                  for row in setting.rows]
        lines.append("")
    return "\n".join(lines) + "\n"


def build_report(setting: Setting, seeds: list[int], out: Path, work: Path, *, n_eval: int, n_quality: int,
                 n_attack: int, n_certify: int, n_check: int, device: str, command: str) -> Path:
    import torch

    start = time.perf_counter()
    sizes = {"n_eval": n_eval, "n_quality": n_quality, "n_attack": n_attack, "n_certify": n_certify,
             "n_check": n_check}
    per_seed = [run_seed(setting, seed, work, **sizes, device=device) for seed in seeds]
    out.parent.mkdir(parents=True, exist_ok=True)
    plot = plot_certificates(out.with_name(f"{out.stem}-certificates.svg"), per_seed, setting.name)
    pictures = plot_examples(out.with_name(f"{out.stem}-examples.png"),
                             {row: c["examples"] for row, c in per_seed[0]["checks"].items()},
                             f"{setting.name}, seed {seeds[0]}: default attack at p50")
    settings = {"command": command, **sizes, "device": device, "threads": torch.get_num_threads(), "plot": plot.name,
                "examples": pictures.name}
    return write_report(out, render(setting, per_seed, seeds, settings, time.perf_counter() - start))
