"""The `bench` command line: run, train, board, models, threats, data."""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from bench.errors import BenchError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="bench: robustness evaluation of image classifiers and generative models.")
data_app = typer.Typer(no_args_is_help=True, help="List and fetch datasets.")
app.add_typer(data_app, name="data")
perturbation_app = typer.Typer(no_args_is_help=True, help="Learned perturbation sets (CVAE cards): "
                                                           "statistics, quality, reproduction report.")
app.add_typer(perturbation_app, name="perturbation")
console = Console(stderr=True)
_debug = {"on": False}

ResultsOpt = typer.Option(None, "--results", help="Results folder (default $BENCH_RESULTS or ./bench-results).")
DeviceOpt = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto.")
DataRootOpt = typer.Option(None, "--data-root", help="Dataset folder (default $BENCH_DATA or ~/.cache/bench/data).")


def friendly(fn: Callable) -> Callable:
    """Print BenchErrors as two lines, without a traceback unless --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BenchError as err:
            if _debug["on"]:
                raise
            console.print(f"[bold red]error:[/] {err.problem}", highlight=False)
            if err.fix:
                console.print(f"  [bold]fix:[/] {err.fix}", highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("interrupted: finished batches are saved; rerun the same command to resume")
            raise typer.Exit(130) from None

    return wrapper


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks.")) -> None:
    _debug["on"] = debug


@app.command()
@friendly
def run(model: str = typer.Option(..., "--model", "-m", help="Model card id or path to a card YAML."),
        threat: str = typer.Option(..., "--threat", "-t", help="Threat card id or path to a card YAML."),
        n: int = typer.Option(1000, "--n", help="Evaluation points (a fixed subset of the test split)."),
        seed: int = typer.Option(0, "--seed", help="Seed of every random choice in the attack."),
        device: str = DeviceOpt,
        batch_size: int = typer.Option(500, "--batch-size", help="Points per batch (one store shard each)."),
        results: Optional[Path] = ResultsOpt, data_root: Optional[Path] = DataRootOpt,
        json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON.")) -> None:
    """Evaluate a model against a threat; resumes an interrupted run of the same arguments."""
    import json

    from bench.run import evaluate

    summary = evaluate(model, threat, n=n, seed=seed, device=device, batch_size=batch_size, results=results,
                       data_root=data_root, progress=sys.stderr.isatty() or not json_out)
    typer.echo(json.dumps(summary.to_dict(), indent=2) if json_out else str(summary))


@app.command()
@friendly
def train(card: str = typer.Argument(..., help="Model card id or path."), device: str = DeviceOpt,
          fresh: bool = typer.Option(False, "--fresh", help="Discard an interrupted run's checkpoint."),
          data_root: Optional[Path] = DataRootOpt) -> None:
    """Train a card's recipe into the cache; compare with the weights the card ships, if any."""
    from bench.models import load_model_card
    from bench.models import train as train_card
    from bench.models.reproduce import quick_metrics
    from bench.models.weights import sha256_file
    from bench.run import resolve_device

    model_card = load_model_card(card)
    dev = resolve_device(device)
    path = train_card(model_card, device=dev, data_root=data_root, fresh=fresh)
    typer.echo(f"trained weights  {path}\nsha256           {sha256_file(path)}")
    if model_card.task == "cvae":
        _print_stats(model_card, dev)
        return
    rows = [("trained", quick_metrics(model_card, path, device=dev))]
    if model_card.weights_path is not None and model_card.weights_path.is_file():
        rows.append(("shipped", quick_metrics(model_card, model_card.weights_path, device=dev)))
    for name, metrics in rows:
        typer.echo(f"{name:8s}         " + "   ".join(f"{k} {v:.2%}" for k, v in metrics.items()))


@app.command()
@friendly
def board(dataset: Optional[str] = typer.Option(None, "--dataset", help="Only this dataset."),
          threat: Optional[str] = typer.Option(None, "--threat", help="Only this threat card id."),
          fmt: str = typer.Option("markdown", "--format", help="markdown, csv or json."),
          quality: bool = typer.Option(False, "--quality", help="Only the perturbation-set quality table."),
          results: Optional[Path] = ResultsOpt) -> None:
    """Print the leaderboard from the results store (markdown also shows perturbation-set quality)."""
    from bench.leaderboard import FORMATS, leaderboard, quality_board, render, render_quality
    from bench.store import Store

    if fmt not in FORMATS:
        raise BenchError(f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    runs, sets = Store(results), Store(results, table="quality")
    if quality:
        if not sets.has_rows():
            raise BenchError(f"no perturbation-set quality results under {sets.root}",
                             "run `bench perturbation quality CVAE_CARD` first")
        typer.echo(render_quality(quality_board(sets, dataset), fmt))
        return
    if runs.has_rows() or not sets.has_rows():  # with no results at all, this raises the helpful error
        typer.echo(render(leaderboard(runs, dataset, threat), fmt))
    if fmt == "markdown" and threat is None and sets.has_rows():
        typer.echo("\n" + render_quality(quality_board(sets, dataset), fmt))


def _print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


@app.command()
@friendly
def models() -> None:
    """List the model cards."""
    from bench.cards import catalogue
    from bench.models import load_model_card

    rows = []
    for card_id, path in catalogue("model").items():
        try:
            c = load_model_card(path)
        except BenchError as err:
            rows.append([card_id, "", "", "", f"[red]invalid: {err.problem}[/]"])
            continue
        source = c.weights.source if c.weights else "trained on first use"
        recipe = c.recipe.name if c.recipe else "-"
        arch = c.architecture.name if c.architecture else "-"
        rows.append([c.id, c.dataset, arch, f"{source} / recipe {recipe}", c.description or ""])
    _print_table("model cards", ["id", "dataset", "architecture", "weights", "description"], rows)


@app.command()
@friendly
def threats() -> None:
    """List the threat cards."""
    from bench.attacks import make_threat
    from bench.cards import catalogue

    rows = []
    for card_id, path in catalogue("threat").items():
        try:
            c, _ = make_threat(path)
        except BenchError as err:
            rows.append([card_id, "", "", "", f"[red]invalid: {err.problem}[/]"])
            continue
        params = ", ".join(f"{k}={v}" for k, v in c.params.items())
        rows.append([c.id, c.family, ", ".join(c.datasets) or "any", params, c.hash[:12]])
    _print_table("threat cards", ["id", "family", "datasets", "params", "protocol"], rows)


def _print_stats(card, device) -> None:
    from bench.models.perturbation_set import latent_stats

    stats = latent_stats(card, device=device).summary()
    _print_table(f"latent distance r on held-out pairs: {card.id}", list(stats),
                 [[f"{v:.0f}" if k == "n" else f"{v:.3f}" for k, v in stats.items()]])


@perturbation_app.command("stats")
@friendly
def perturbation_stats(card: str = typer.Argument(..., help="CVAE model card id or path."), device: str = DeviceOpt,
                       json_out: bool = typer.Option(False, "--json", help="Print the statistics as JSON.")) -> None:
    """Distribution of the standardised posterior-prior distance r on held-out pairs (eps percentiles)."""
    import json

    from bench.models.perturbation_set import cvae_card, latent_stats
    from bench.run import resolve_device

    model_card = cvae_card(card, "bench perturbation stats")
    if json_out:
        typer.echo(json.dumps(latent_stats(model_card, device=resolve_device(device)).summary(), indent=2))
    else:
        _print_stats(model_card, resolve_device(device))


@perturbation_app.command("quality")
@friendly
def perturbation_quality(
        card: str = typer.Argument(..., help="CVAE model card id or path."),
        pairs: str = typer.Option("in-family", "--pairs", help="in-family, or a perturbed-* threat card "
                                                                "(e.g. perturbed-shear for a held-out family)."),
        eps: str = typer.Option("max", "--eps", help="Radius: a number, or p50, p75, max, ..."),
        n: int = typer.Option(500, "--n", help="Test pairs (first n of the fixed evaluation subset)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the pair draws and the EAE samples."),
        device: str = DeviceOpt, results: Optional[Path] = ResultsOpt) -> None:
    """Set-quality metrics (encoder/PGD/expected approximation error, reconstruction, KL, identity)."""
    from bench.quality import evaluate_quality

    typer.echo(str(evaluate_quality(card, pairs, eps=eps, n=n, seed=seed, device=device, results=results,
                                    progress=sys.stderr.isatty())))


@perturbation_app.command("samples")
@friendly
def perturbation_samples(
        card: str = typer.Argument(..., help="CVAE model card id or path."),
        out: Path = typer.Option(..., "--out", help="Image file (.png or .jpg)."),
        n: int = typer.Option(8, "--n", help="Test images (columns)."),
        draws: int = typer.Option(4, "--draws", help="Prior samples per image (rows after x, x~ and u = 0)."),
        eps: str = typer.Option("max", "--eps", help="Radius the samples are projected into: a number, p50, max, ..."),
        seed: int = typer.Option(0, "--seed", help="Seed of the real perturbation and the samples."),
        device: str = DeviceOpt) -> None:
    """Picture of the set: rows x, a real perturbation, the prior mean (u = 0), prior samples in the ball."""
    from bench.set_samples import sample_grid

    typer.echo(f"samples written to {sample_grid(card, out, n=n, draws=draws, eps=eps, seed=seed, device=device)}")


@perturbation_app.command("report")
@friendly
def perturbation_report(
        setting: str = typer.Option("mnist-rts", "--setting",
                                    help="mnist-rts (the paper's RTS) or mnist-rts-mild (the pilot's milder RTS)."),
        seeds: list[int] = typer.Option([0, 1], "--seed", help="Seeds (repeat the option); at least 2."),
        out: Optional[Path] = typer.Option(None, "--out",
                                           help="Report file [default: docs/learned-perturbation-sets-SETTING.md]."),
        work: Optional[Path] = typer.Option(None, "--work", help="Folder for the per-seed cards and the results "
                                            "store, resumable [default: bench-results/report-SETTING]."),
        n_eval: int = typer.Option(1000, "--n-eval", help="Points for clean and perturbed accuracy."),
        n_quality: int = typer.Option(500, "--n-quality", help="Pairs for the set-quality metrics."),
        n_attack: int = typer.Option(300, "--n-attack", help="Points for the latent attacks."),
        n_certify: int = typer.Option(100, "--n-certify", help="Points for latent-smoothing certification."),
        device: str = DeviceOpt) -> None:
    """Reproduce the MNIST-RTS learned-perturbation-set results and write the markdown report."""
    from bench.reports.learned_sets import build_report
    from bench.reports.learned_sets import setting as find_setting
    from bench.run import resolve_device

    chosen = find_setting(setting)
    if len(seeds) < 2:
        raise BenchError("a reproduction report needs at least 2 seeds", "pass e.g. --seed 0 --seed 1")
    command = f"bench perturbation report --setting {setting} " + " ".join(f"--seed {s}" for s in seeds) + (
        f" --n-eval {n_eval} --n-quality {n_quality} --n-attack {n_attack} --n-certify {n_certify}")
    path = build_report(chosen, seeds, out or Path(f"docs/learned-perturbation-sets-{setting}.md"),
                        work or Path(f"bench-results/report-{setting}"), n_eval=n_eval, n_quality=n_quality,
                        n_attack=n_attack, n_certify=n_certify, device=str(resolve_device(device)), command=command)
    typer.echo(f"report written to {path}")


@data_app.command("list")
@friendly
def data_list(data_root: Optional[Path] = DataRootOpt) -> None:
    """Datasets and whether their test split loads here."""
    from bench.data import load_dataset, names

    rows = []
    for name in names():
        if name.startswith("folder:"):
            rows.append([name, "your PATH/<class>/<image> folder"])
            continue
        try:
            ds = load_dataset(name, "test", data_root)
            rows.append([name, f"ok: {len(ds)} test images {tuple(ds.x.shape[1:])}"])
        except BenchError as err:
            rows.append([name, f"missing: {err.fix}"])
    _print_table("datasets", ["name", "status"], rows)


@data_app.command("download")
@friendly
def data_download(name: str = typer.Argument(..., help="Dataset to fetch (cifar10)."),
                  data_root: Optional[Path] = DataRootOpt) -> None:
    """Fetch a dataset that is not shipped in a package (needs the network)."""
    from bench.data.cifar10 import download_cifar10

    if name != "cifar10":
        raise BenchError(f"{name} cannot be downloaded by bench", "mnist and digits ship in packages; "
                         "only cifar10 is downloaded")
    typer.echo(f"CIFAR-10 is in {download_cifar10(data_root)}")


def main() -> None:
    app()
