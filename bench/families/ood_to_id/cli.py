"""`bench ood2id report`: the MNIST reproduction report of OOD-to-ID mapping defences."""
from __future__ import annotations

from pathlib import Path

import typer

from bench.cli.common import DeviceOpt, friendly

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                  help="OOD-to-ID mapping defences (Amich & Eshete): reproduction report.")


@app.command("report")
@friendly
def report(seeds: list[int] = typer.Option([0, 1], "--seed", help="Seeds (repeat the option); at least 2."),
           out: Path = typer.Option(Path("docs/ood-to-id-mnist.md"), "--out", help="Report file."),
           work: Path = typer.Option(Path("bench-results/report-ood2id"), "--work",
                                     help="Folder for the per-seed cards and the results store (resumable)."),
           n_eval: int = typer.Option(1000, "--n-eval", help="Points for clean accuracy and the shifts."),
           n_attack: int = typer.Option(200, "--n-attack", help="Points for each attack."),
           n_mnist_c: int = typer.Option(10000, "--n-mnist-c", help="Points for the MNIST-C table."),
           device: str = DeviceOpt) -> None:
    """Train, attack and write the MNIST report: standard vs defended under shifts, transfer and adaptive
    attacks, with every claim checked; and the MNIST-C table of the shipped MNIST models."""
    from bench.families.ood_to_id.report import build_report
    from bench.devices import resolve_device

    command = ("bench ood2id report " + " ".join(f"--seed {s}" for s in seeds)
               + f" --n-eval {n_eval} --n-attack {n_attack} --n-mnist-c {n_mnist_c}")
    path = build_report(seeds, out, work, n_eval=n_eval, n_attack=n_attack, n_mnist_c=n_mnist_c,
                        device=str(resolve_device(device)), command=command)
    typer.echo(f"report written to {path}")
