"""`bench perturbation ...`: statistics, pictures and the reproduction report of learned perturbation sets.

Set quality is an ordinary threat family: `bench run --model CVAE_CARD --threat set-quality`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bench.cli.common import DeviceOpt, friendly, print_listing
from bench.errors import BenchError

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                  help="Learned perturbation sets (CVAE cards): statistics, pictures, reproduction report. Set "
                       "quality: bench run --threat set-quality.")


@app.command("stats")
@friendly
def stats(card: str = typer.Argument(..., help="CVAE model card id or path."), device: str = DeviceOpt,
          json_out: bool = typer.Option(False, "--json", help="Print the statistics as JSON.")) -> None:
    """Distribution of the standardised posterior-prior distance r on held-out pairs (eps percentiles)."""
    import json

    from bench.families.learned_sets.sets import cvae_card, latent_stats
    from bench.devices import resolve_device
    from bench.training import ensure_trained

    cvae, dev = cvae_card(card, "bench perturbation stats"), resolve_device(device)
    ensure_trained(cvae, device=dev)
    summary = latent_stats(cvae, device=dev).summary()
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
    else:
        print_listing(f"latent distance r on held-out pairs: {card}", list(summary),
                      [[f"{v:.0f}" if k == "n" else f"{v:.3f}" for k, v in summary.items()]], "table")


@app.command("samples")
@friendly
def samples(card: str = typer.Argument(..., help="CVAE model card id or path."),
            out: Path = typer.Option(..., "--out", help="Image file (.png or .jpg)."),
            n: int = typer.Option(8, "--n", help="Test images (columns)."),
            draws: int = typer.Option(4, "--draws", help="Prior samples per image (rows after x, x~ and u = 0)."),
            eps: str = typer.Option("max", "--eps",
                                    help="Radius the samples are projected into: a number, p50, max, ..."),
            seed: int = typer.Option(0, "--seed", help="Seed of the real perturbation and the samples."),
            device: str = DeviceOpt) -> None:
    """Picture of the set: rows x, a real perturbation, the prior mean (u = 0), prior samples in the ball."""
    from bench.families.learned_sets.samples import sample_grid

    typer.echo(f"samples written to {sample_grid(card, out, n=n, draws=draws, eps=eps, seed=seed, device=device)}")


@app.command("report")
@friendly
def report(setting: str = typer.Option("mnist-rts", "--setting",
                                       help="mnist-rts (the paper's RTS) or mnist-rts-mild (the pilot's milder RTS)."),
           seeds: list[int] = typer.Option([0, 1, 2], "--seed", help="Seeds (repeat the option); at least 3, so "
                                           "that paired comparisons of rows can be told from seed noise."),
           out: Optional[Path] = typer.Option(None, "--out",
                                              help="Report file [default: docs/learned-perturbation-sets-SETTING.md]."),
           work: Optional[Path] = typer.Option(None, "--work", help="Folder for the per-seed cards and the results "
                                               "store, resumable [default: bench-results/report-SETTING]."),
           n_eval: int = typer.Option(1000, "--n-eval", help="Points for clean and perturbed accuracy."),
           n_quality: int = typer.Option(500, "--n-quality", help="Pairs for the set-quality metrics."),
           n_attack: int = typer.Option(300, "--n-attack", help="Points for the latent attacks."),
           n_certify: int = typer.Option(100, "--n-certify", help="Points for latent-smoothing certification."),
           n_check: int = typer.Option(100, "--n-check", help="Points for the stronger, gradient-free and transfer "
                                                              "checks of latent PGD."),
           device: str = DeviceOpt) -> None:
    """Reproduce the MNIST-RTS learned-perturbation-set results and write the markdown report."""
    from bench.families.learned_sets.report import build_report
    from bench.families.learned_sets.report import setting as find_setting
    from bench.devices import resolve_device

    chosen = find_setting(setting)
    if len(seeds) < 3:
        raise BenchError("this reproduction report needs at least 3 seeds", "pass e.g. --seed 0 --seed 1 --seed 2")
    command = f"bench perturbation report --setting {setting} " + " ".join(f"--seed {s}" for s in seeds) + (
        f" --n-eval {n_eval} --n-quality {n_quality} --n-attack {n_attack} --n-certify {n_certify} --n-check {n_check}")
    path = build_report(chosen, seeds, out or Path(f"docs/learned-perturbation-sets-{setting}.md"),
                        work or Path(f"bench-results/report-{setting}"), n_eval=n_eval, n_quality=n_quality,
                        n_attack=n_attack, n_certify=n_certify, n_check=n_check, device=str(resolve_device(device)),
                        command=command)
    typer.echo(f"report written to {path}")
