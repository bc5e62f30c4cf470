"""The MNIST reproduction report of OOD-to-ID mapping defences (Amich & Eshete, 2022), CPU-sized.

For every seed: train the standard CNN and the translator (recipe seed = seed; the translator's FGSM pairs
attack that seed's CNN), compose the defence with and without its gate, then evaluate the three models on
clean points, under the natural shifts of ``ood-mnist-dark-sharp`` (darker and sharper, which the translator
trains on, and gamma, contrast and blur, which it does not), under a transfer attack crafted on the bare
CNN (the paper's setting) and under adaptive attacks through the translator: end-to-end PGD and AutoAttack,
and BPDA through the gate (with PGD and with APGD); and the state-of-the-art reference (mnist-cnn-pgd-at)
under AutoAttack, for the paper's "outperforms" claim. Then the MNIST-C table of the shipped MNIST models with
mCE against the standard CNN. Everything goes through ``bench.evaluate`` into one results folder, so the
report resumes; every claim is checked against its statistic and stated as passing or failing.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from bench.errors import BenchError
from bench.threats.grid_board import cell_columns, normalised_errors
from bench.reports import VERDICT_WORDS, SeedRunner, Verdict, mean_sd, verdict, write_report
from bench.threats.autoattack import CHECK_NOTE
from bench.threats.base import BoardRun

ROWS = {"standard": "mnist-cnn-standard", "defended": "mnist-cnn-ood2id", "gated": "mnist-cnn-ood2id-gated"}
TRANSLATOR = "mnist-ood2id-translator"
SHIFTS = "ood-mnist-dark-sharp"
TRAINED_ON = ("darker", "sharper")  # the shifts the translator's recipe trains on; the card's others are held out
ATTACKS = {"pgd": "pgd-linf-0.3", "autoattack": "autoattack-linf-0.3", "bpda": "pgd-bpda-linf-0.3",
           "bpda-apgd": "apgd-bpda-linf-0.3", "transfer": "pgd-transfer-linf-0.3"}
ADAPTIVE = ("pgd", "autoattack", "bpda", "bpda-apgd")
ROW_ATTACKS = {"standard": ("pgd", "autoattack"), "defended": ("pgd", "autoattack", "transfer"),
               "gated": ("pgd", "autoattack", "bpda", "bpda-apgd", "transfer")}
REFERENCE = "mnist-cnn-pgd-at"  # the state-of-the-art defence the paper's "outperforms" claim is held against
MNIST_C = "corruptions-mnist"
MNIST_C_MODELS = ("mnist-cnn-standard", "mnist-lenet-standard", "mnist-cnn-pgd-at")
CLEAN_TOLERANCE = 0.01  # "benign accuracy preserved": within 1 point
RECOVERED = 0.5  # "recovers most of the lost accuracy": at least half of it
MATERIAL = 0.05  # a shift level costs the standard CNN accuracy worth recovering: at least 5 points
NEAR = 0.05  # "falls to near the undefended number": within 5 points of the bare CNN under PGD


def _accuracies(rows) -> dict[str, float]:
    """Accuracy per cell column of a grid run."""
    return {c: float(rows[c].mean()) for cells in cell_columns(rows).values() for c in cells}


@torch.no_grad()
def gate_rates(gated_card: Path, n: int, device: str) -> dict[str, float]:
    """How often the gate sends an image through the translator: clean test points and each trained shift at
    the middle of its card strengths."""
    from bench.data import load_dataset, subset_indices
    from bench.ops.shifts import SHIFTS as SHIFT_FNS
    from bench.training import build_trained

    model = build_trained(str(gated_card), device=device)
    test = load_dataset("mnist", "test")
    x = test.x[subset_indices(len(test), n)].to(device)
    inputs = {"clean": x, "darker 0.4": SHIFT_FNS.get("darker")(x, 0.4, None),
              "sharper 2": SHIFT_FNS.get("sharper")(x, 2.0, None)}
    return {name: float(torch.cat([model.translated(b) for b in images.split(500)]).float().mean())
            for name, images in inputs.items()}


def run_seed(seed: int, work: Path, *, n_eval: int, n_attack: int, device: str) -> dict:
    """Train and evaluate everything for one seed; every result also lands in ``work/results``."""
    runner = SeedRunner(seed, work, device)
    classifier = runner.card("model", ROWS["standard"])
    translator = runner.card("model", TRANSLATOR, classifier=classifier)
    models = {"standard": classifier,
              **{row: runner.card("model", ROWS[row], classifier=classifier, translator=translator)
                 for row in ("defended", "gated")}}
    attacks = {name: card if name != "transfer" else runner.card("threat", card, source=classifier)
               for name, card in ATTACKS.items()}
    out: dict = {"clean": {}, "shifts": {}, "attacks": {}, "worst": {}, "warnings": {}}
    for row, card in models.items():
        out["clean"][row] = runner.run(card, "clean", n_eval).clean_acc
        out["shifts"][row] = _accuracies(runner.rows(runner.run(card, SHIFTS, n_eval).run_id))
        robust = {}
        for name in ROW_ATTACKS[row]:
            run = runner.run(card, attacks[name], n_attack)
            robust[name] = runner.rows(run.run_id).set_index("index")["robust"]
            if name == "autoattack":
                out["warnings"][row] = _autoattack_warnings(run)
        out["attacks"][row] = {name: float(flags.mean()) for name, flags in robust.items()}
        adaptive = [robust[name] for name in ADAPTIVE if name in robust]
        out["worst"][row] = float(_robust_under_all(adaptive).mean())
    reference = runner.run(REFERENCE, ATTACKS["autoattack"], n_attack)
    out["reference"] = float(runner.rows(reference.run_id)["robust"].mean())
    out["warnings"][REFERENCE] = _autoattack_warnings(reference)
    out["gate"] = gate_rates(models["gated"], n_eval, device)
    out["models"] = {row: str(path) for row, path in models.items()}
    return out


def _autoattack_warnings(run) -> list[str]:
    """AutoAttack's own checks (gradient masking, randomness, Square beating the gradient attacks) on a run."""
    return [note.removeprefix(CHECK_NOTE) for note in run.notes if note.startswith(CHECK_NOTE)]


def _robust_under_all(flags: list[pd.Series]) -> pd.Series:
    """Robust under every attack: the points' robust flags (indexed by point) and-ed over attacks."""
    combined = flags[0]
    for other in flags[1:]:
        combined = combined & other.reindex(combined.index, fill_value=False)
    return combined


def mnist_c_table(work: Path, n: int, device: str, defended: Path) -> dict:
    """Per-corruption accuracy, mean corruption accuracy, mCE and relative mCE against the standard CNN for
    the shipped MNIST models and the seed-0 defence (evaluation seed 0)."""
    runner = SeedRunner(0, work, device)
    runs = {model: runner.run(model, MNIST_C, n) for model in MNIST_C_MODELS}
    runs[defended.stem] = runner.run(defended, MNIST_C, n)
    rows = {model: BoardRun(model, runner.rows(run.run_id)) for model, run in runs.items()}
    baseline = rows[MNIST_C_MODELS[0]]
    out = {}
    for model, board_run in rows.items():
        errors = normalised_errors(board_run, baseline)
        out[model] = {"clean": runs[model].clean_acc, "mean": runs[model].corruption_acc,
                      "cells": _accuracies(board_run.rows),
                      **{k: (v.value, v.low, v.high) for k, v in errors.items()}}
    return out


def _strengths() -> dict[str, list[float]]:
    from bench.cards import locate, read_card

    return read_card(locate("threat", SHIFTS))["params"]["strengths"]


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def _fmt(values: list[float], digits: int = 1) -> str:
    return mean_sd(values, 100, digits)


def material_cells(per_seed: list[dict], shifts: tuple[str, ...], inside: bool) -> list[str]:
    """The cells of the shifts (``inside``) or of the other shifts where the standard CNN loses at least
    ``MATERIAL`` of its clean accuracy (mean over seeds): only there is there accuracy to recover."""
    def lost(column: str) -> float:
        return _mean([s["clean"]["standard"] - s["shifts"]["standard"][column] for s in per_seed])

    return [c for c in per_seed[0]["shifts"]["standard"]
            if (c.removeprefix("correct_").rsplit("_", 1)[0] in shifts) == inside and lost(c) >= MATERIAL]


def recovered_fraction(seed: dict, row: str, cells: list[str]) -> float:
    """Share of the accuracy the standard CNN loses under the cells that the defence wins back:
    sum over cells (acc_row - acc_standard) / sum over cells (clean_standard - acc_standard)."""
    standard, defended = seed["shifts"]["standard"], seed["shifts"][row]
    lost = sum(seed["clean"]["standard"] - standard[c] for c in cells)
    won = sum(defended[c] - standard[c] for c in cells)
    return won / lost if lost > 0 else float("nan")


def _per_seed(values: list[float], digits: int = 1) -> str:
    return ", ".join(f"{100 * v:.{digits}f}" for v in values)


def claims(per_seed: list[dict]) -> list[tuple[str, Verdict, str]]:
    """(claim, verdict, the statistic behind it) for the paper's claims, the adaptive-attack expectation and
    checks of the attacks; each verdict is decided per seed (see ``verdict``)."""
    out: list[tuple[str, Verdict, str]] = []
    trained, held_out = material_cells(per_seed, TRAINED_ON, True), material_cells(per_seed, TRAINED_ON, False)
    for shift in TRAINED_ON:
        if not any(c.startswith(f"correct_{shift}_") for c in trained):
            worst = max(_mean([s["clean"]["standard"] - s["shifts"]["standard"][c] for s in per_seed])
                        for c in per_seed[0]["shifts"]["standard"] if c.startswith(f"correct_{shift}_"))
            out.append((f"{shift} inputs cost the standard CNN accuracy for the defence to recover", None,
                        f"the most it loses at any {shift} level of the card is {100 * worst:.1f} points, under the "
                        f"{100 * MATERIAL:.0f} points taken as material: this part of the claim cannot be tested"))
    standard_pgd = [s["attacks"]["standard"]["pgd"] for s in per_seed]
    for row in ("defended", "gated"):
        diffs = [s["clean"][row] - s["clean"]["standard"] for s in per_seed]
        out.append((f"{row}: benign accuracy is kept (the paper says exactly; tested with a tolerance of "
                    f"{100 * CLEAN_TOLERANCE:.0f} point against the standard CNN)",
                    verdict([d >= -CLEAN_TOLERANCE for d in diffs]),
                    f"clean accuracy minus the standard CNN's: {_fmt(diffs, 2)} points (per seed "
                    f"{_per_seed(diffs, 2)})"))
        for cells, what in ((trained, "darker/sharper (trained-on) inputs"),
                            (held_out, "held-out shifts (not trained on; not a paper claim)")):
            if not cells:
                continue
            fractions = [recovered_fraction(s, row, cells) for s in per_seed]
            names = ", ".join(c.removeprefix("correct_") for c in cells)
            out.append((f"{row}: recovers most (at least {RECOVERED:.0%}) of the accuracy lost to {what}",
                        verdict([f >= RECOVERED for f in fractions]),
                        f"share of the lost accuracy won back, summed over the cells where the standard CNN loses "
                        f"at least {100 * MATERIAL:.0f} points ({names}): {_fmt(fractions, 0)}% (per seed "
                        f"{_per_seed(fractions, 0)}%)"))
        costs = [max(s["shifts"]["standard"][c] - s["shifts"][row][c] for c in s["shifts"]["standard"])
                 for s in per_seed]
        out.append((f"{row}: translating never costs more than {100 * MATERIAL:.0f} points on any shift cell (a "
                    "safety check, not a paper claim)", verdict([c <= MATERIAL for c in costs]),
                    f"largest loss against the standard CNN on one cell: {_per_seed(costs)} points per seed"))
        transfer = [s["attacks"][row]["transfer"] for s in per_seed]
        clean = [s["clean"]["standard"] for s in per_seed]
        share = [(t - p) / (c - p) if c > p else float("nan") for t, p, c in zip(transfer, standard_pgd, clean)]
        out.append((f"{row}: in the paper's non-adaptive setting (PGD crafted on the bare CNN), it recovers most "
                    "of the accuracy the attack takes from the bare CNN", verdict([x >= RECOVERED for x in share]),
                    f"transfer robust accuracy {_fmt(transfer)}% against the bare CNN's {_fmt(standard_pgd)}% "
                    f"under the same PGD: {_fmt(share, 0)}% recovered (per seed {_per_seed(share, 0)}%)"))
        worst = [s["worst"][row] for s in per_seed]
        attacks = ", ".join(a for a in ADAPTIVE if a in ROW_ATTACKS[row])
        gains = [w - s["worst"]["standard"] for w, s in zip(worst, per_seed)]
        out.append((f"{row}: improves robustness to adversarial inputs (paper claim), by at least "
                    f"{100 * MATERIAL:.0f} points over the standard CNN, both attacked adaptively",
                    verdict([g >= MATERIAL for g in gains]),
                    f"robust under every adaptive attack ({attacks}): {_fmt(worst)}% against the standard CNN's "
                    f"{_fmt([s['worst']['standard'] for s in per_seed])}% (gain {_fmt(gains)} points, per seed "
                    f"{_per_seed(gains)})"))
        reference = [s["reference"] for s in per_seed]
        out.append((f"{row}: outperforms state-of-the-art defences (paper claim), held against {REFERENCE} (PGD "
                    "adversarial training) under AutoAttack",
                    verdict([w > r for w, r in zip(worst, reference)]),
                    f"robust under every adaptive attack {_fmt(worst)}% against {REFERENCE}'s {_fmt(reference)}% "
                    f"under AutoAttack (per seed {_per_seed(worst)} against {_per_seed(reference)})"))
        out.append((f"{row}: under adaptive attack it falls to near the undefended number (within "
                    f"{100 * NEAR:.0f} points of the bare CNN under PGD; the expectation for an input "
                    "transformation attacked adaptively, not a paper claim)",
                    verdict([w <= p + NEAR for w, p in zip(worst, standard_pgd)]),
                    f"robust under every adaptive attack ({attacks}): {_fmt(worst)}% against the bare CNN's "
                    f"{_fmt(standard_pgd)}% under PGD"))
    for row in ROW_ATTACKS:
        gaps = [s["attacks"][row]["pgd"] - s["attacks"][row]["autoattack"] for s in per_seed]
        out.append((f"{row}: AutoAttack is at least as strong as PGD (a check of the attacks, not a paper claim)",
                    verdict([g >= -0.01 for g in gaps]),
                    f"PGD-40 robust accuracy minus AutoAttack's: {_fmt(gaps)} points (per seed {_per_seed(gaps)})"
                    + ("; PGD alone would overstate this row's robustness" if _mean(gaps) > NEAR else "")))
    return out


def render(per_seed: list[dict], seeds: list[int], mnist_c: dict, settings: dict, seconds: float) -> str:
    rows = list(ROWS)
    lines = ["# OOD-to-ID mapping defences on MNIST: reproduction report", "",
             "Amich & Eshete, *Rethinking Machine Learning Robustness via its Link with the Out-of-Distribution "
             "Problem* (2022): an image-to-image translator maps inputs back to the training distribution before "
             "a frozen classifier. Our translator and its training are the design derived in the notes (the "
             "paper's code is not public): a residual U-Net trained by L1 on darker, sharper and FGSM "
             f"(against that seed's CNN) pairs (card `{TRANSLATOR}`).", "",
             f"Written by `{settings['command']}` on {settings['device']} ({settings['threads']} threads; this "
             f"invocation {seconds / 60:.1f} min, reusing the runs and weights already stored); seeds "
             f"{', '.join(map(str, seeds))} (recipe seed of the CNN and the "
             "translator, and evaluation seed). Values are mean ± standard deviation over seeds. Accuracy is "
             f"plain accuracy on {settings['n_eval']} test points; robust accuracy counts a point when it is "
             f"right clean and under the attack, on {settings['n_attack']} test points. Rows: `standard` "
             f"({ROWS['standard']}), `defended` ({ROWS['defended']}: every input translated), `gated` "
             f"({ROWS['gated']}: translated only when mean |T(x) - x| exceeds its 95th percentile on clean "
             "training images).", "", "## Claims", "",
             "Each claim is decided per seed: PASS when it holds in every seed, FAIL when in none, MIXED "
             "otherwise. Points are percentage points.", ""]
    for claim, holds, statistic in claims(per_seed):
        lines.append(f"- **{VERDICT_WORDS[holds]}**: {claim}. {statistic}.")
    lines += ["", "## Clean accuracy and the gate (%)", "", "| row | clean |", "|---|---|"]
    lines += [f"| {row} | {_fmt([s['clean'][row] for s in per_seed], 2)} |" for row in rows]
    gate = list(per_seed[0]["gate"])
    lines += ["", "Share of inputs the gate translates: " + "; ".join(
        f"{name} {_fmt([s['gate'][name] for s in per_seed])}%" for name in gate) + ".", "",
              f"## Natural shifts (accuracy %, threat `{SHIFTS}`)", "",
              "Darker and sharper are in the translator's training ranges; the others are held out. Level k is "
              "the card's k-th strength: " + "; ".join(f"{name} {'/'.join(f'{v:g}' for v in levels)}"
                                                       for name, levels in _strengths().items()) + ".", "",
              "| shift, level | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    for column in per_seed[0]["shifts"]["standard"]:
        label = column.removeprefix("correct_").rsplit("_", 1)
        lines.append(f"| {label[0]} {label[1]} | " + " | ".join(
            _fmt([s["shifts"][row][column] for s in per_seed]) for row in rows) + " |")
    lines += ["", "## Attacks at L-inf 0.3 (robust accuracy %)", "",
              f"`pgd`: {ATTACKS['pgd']} (40 steps of 0.01, end to end through the translator); `autoattack`: "
              f"{ATTACKS['autoattack']} (standard version, end to end); `bpda`: {ATTACKS['bpda']} (the gate's "
              f"forward, gradients through the always-translate surrogate); `bpda-apgd`: {ATTACKS['bpda-apgd']} "
              f"(the same BPDA with APGD-CE, 100 iterations); `transfer`: {ATTACKS['transfer']} "
              "(PGD on that seed's bare CNN, the paper's non-adaptive setting). `worst adaptive`: robust under "
              "every adaptive attack run on the row, point by point — the defence's headline.", "",
              "| row | " + " | ".join(ATTACKS) + " | worst adaptive |", "|---|" + "---|" * (len(ATTACKS) + 1)]
    for row in rows:
        cells = [_fmt([s["attacks"][row][a] for s in per_seed]) if a in ROW_ATTACKS[row] else "–"
                 for a in ATTACKS]
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {_fmt([s['worst'][row] for s in per_seed])} |")
    reference = _fmt([s["reference"] for s in per_seed])
    lines.append(f"| {REFERENCE} (reference) | " + " | ".join(reference if a == "autoattack" else "–" for a in ATTACKS)
                 + f" | {reference} |")
    lines += ["", "AutoAttack's own warnings (its checks for gradient masking, randomness and Square beating the "
              "gradient attacks), per row and seed:", ""]
    for row in [*rows, REFERENCE]:
        found = [f"seed {seed}: " + "; ".join(s["warnings"].get(row, [])) for seed, s in zip(seeds, per_seed)
                 if s["warnings"].get(row)]
        lines.append(f"- {row}: " + (" / ".join(found) if found else "none"))
    lines += ["", "## MNIST-C (accuracy %)", "",
              f"Threat `{MNIST_C}`: each of the 15 MNIST-C corruptions at the severity of the published set, "
              f"generated by bench's library (not the published files), {settings['n_mnist_c']} test points, "
              "evaluation seed 0. mCE and relative mCE are against mnist-cnn-standard (= 1), with 95% paired "
              "bootstrap intervals.", ""]
    corruptions = [c.removeprefix("correct_").rsplit("_", 1)[0] for c in mnist_c[MNIST_C_MODELS[0]]["cells"]]
    lines += ["| model | clean | mean | mCE | relative mCE | " + " | ".join(corruptions) + " |",
              "|---|" + "---|" * (4 + len(corruptions))]
    for model, values in mnist_c.items():
        ratios = [f"{values[k][0]:.3f} [{values[k][1]:.3f}, {values[k][2]:.3f}]" if k in values else "–"
                  for k in ("mce", "relative_mce")]
        lines.append(f"| {model} | {100 * values['clean']:.1f} | {100 * values['mean']:.1f} | " + " | ".join(ratios)
                     + " | " + " | ".join(f"{100 * v:.0f}" for v in values["cells"].values()) + " |")
    lines += ["", "## Per-seed values", "", "```", *(f"seed {seed}: {s}" for seed, s in zip(seeds, per_seed)),
              "```", ""]
    return "\n".join(lines)


def build_report(seeds: list[int], out: Path, work: Path, *, n_eval: int, n_attack: int, n_mnist_c: int,
                 device: str, command: str) -> Path:
    if len(seeds) < 2:
        raise BenchError("a reproduction report needs at least 2 seeds", "pass e.g. --seed 0 --seed 1")
    start = time.perf_counter()
    per_seed = [run_seed(seed, work, n_eval=n_eval, n_attack=n_attack, device=device) for seed in seeds]
    mnist_c = mnist_c_table(work, n_mnist_c, device, Path(per_seed[0]["models"]["defended"]))
    settings = {"command": command, "n_eval": n_eval, "n_attack": n_attack, "n_mnist_c": n_mnist_c,
                "device": device, "threads": torch.get_num_threads()}
    return write_report(out, render(per_seed, seeds, mnist_c, settings, time.perf_counter() - start))
