"""`bench vae report`: the MNIST reproduction report of VAE robustness."""
from __future__ import annotations

from pathlib import Path

import typer

from bench.cli.common import DeviceOpt, friendly

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                  help="VAE robustness (margins, certified ELBO): reproduction report.")


@app.command("report")
@friendly
def report(seeds: list[int] = typer.Option([0, 1], "--seed", help="Seeds (repeat the option); at least 2."),
           out: Path = typer.Option(Path("docs/vae-robustness-mnist.md"), "--out", help="Report file."),
           work: Path = typer.Option(Path("bench-results/report-vae"), "--work",
                                     help="Folder for the per-seed cards and the results store (resumable)."),
           n_margin: int = typer.Option(200, "--n-margin", help="Points for the margins."),
           n_elbo: int = typer.Option(500, "--n-elbo", help="Points for latent usage, the ELBO's spread and the "
                                      "Lipschitz VAE."),
           n_certified: int = typer.Option(100, "--n-certified", help="Points for the clean, attacked and certified "
                                           "ELBO (CROWN: about 0.5 s a point on a CPU thread)."),
           device: str = DeviceOpt) -> None:
    """Train the VAEs, beta-VAEs, beta-TCVAEs and proVAE for each seed, measure margins and certified ELBOs,
    and write the report with every claim checked."""
    from bench.families.vae_robustness.report import build_report
    from bench.devices import resolve_device

    command = ("bench vae report " + " ".join(f"--seed {s}" for s in seeds)
               + f" --n-margin {n_margin} --n-elbo {n_elbo} --n-certified {n_certified}")
    path = build_report(seeds, out, work, n_margin=n_margin, n_elbo=n_elbo, n_certified=n_certified,
                        device=str(resolve_device(device)), command=command)
    typer.echo(f"report written to {path}")
