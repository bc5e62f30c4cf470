"""`bench robust-training report`: the MNIST reproduction report of PGD-AT, TRADES, MART and ARMOR_D."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bench.cli.common import DeviceOpt, friendly

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                  help="Robust training recipes (TRADES, MART, ARMOR_D): reproduction report.")


@app.command("report")
@friendly
def report(seeds: list[int] = typer.Option([0, 1, 2], "--seed", help="Seeds (repeat the option); at least 3."),
           divergences: list[str] = typer.Option(["kl"], "--divergence",
                                                 help="ARMOR_D rows: kl, alpha (repeat the option for both)."),
           out: Path = typer.Option(Path("docs/robust-training-mnist.md"), "--out", help="Report file."),
           work: Path = typer.Option(Path("bench-results/report-robust-training"), "--work",
                                     help="Folder for the per-seed cards and the results store (resumable)."),
           epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs of every row [default: the "
                                                "cards' 10]."),
           train_subset: Optional[int] = typer.Option(None, "--train-subset", help="Training images of every row "
                                                      "[default: the cards' 10,000]."),
           eps: Optional[float] = typer.Option(None, "--eps", help="L-inf radius for training and evaluation, step "
                                               "sizes scaled with it [default: the cards' 0.3]."),
           n_clean: int = typer.Option(10000, "--n-clean", help="Test points for clean accuracy."),
           n_pgd: int = typer.Option(1000, "--n-pgd", help="Test points for PGD-50 with 10 restarts."),
           n_aa: int = typer.Option(300, "--n-aa", help="Test points for AutoAttack (the first of the PGD points)."),
           min_seeds: int = typer.Option(3, "--min-seeds", help="Refuse fewer seeds than this (lower it only for a "
                                         "smoke run)."),
           device: str = DeviceOpt) -> None:
    """Train every recipe per seed at one budget, evaluate clean, PGD and AutoAttack accuracy on the same test
    points, compare ARMOR_D with its base per seed, and write the markdown report."""
    from bench.devices import resolve_device
    from bench.families.robust_training.report import Budget, build_report

    budget = Budget(epochs=epochs, train_subset=train_subset, eps=eps)
    command = ("bench robust-training report " + " ".join(f"--seed {s}" for s in seeds)
               + "".join(f" --divergence {d}" for d in divergences)
               + (f" --epochs {epochs}" if epochs else "") + (f" --train-subset {train_subset}" if train_subset else "")
               + (f" --eps {eps:g}" if eps else "") + f" --n-clean {n_clean} --n-pgd {n_pgd} --n-aa {n_aa}")
    path = build_report(seeds, out, work, divergences=divergences, budget=budget, n_clean=n_clean, n_pgd=n_pgd,
                        n_aa=n_aa, device=str(resolve_device(device)), command=command, min_seeds=min_seeds)
    typer.echo(f"report written to {path}")
