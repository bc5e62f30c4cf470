"""What every `bench` command shares: friendly errors, common options, listings that survive a pipe."""
from __future__ import annotations

import csv
import functools
import io
import json
import sys
from typing import Callable

import typer
from rich.console import Console

from bench.errors import BenchError

console = Console(stderr=True)
debug = {"on": False}
LISTING_FORMATS = ("table", "json", "csv")

ResultsOpt = typer.Option(None, "--results", help="Results folder (default $BENCH_RESULTS or ./bench-results).")
DeviceOpt = typer.Option("auto", "--device", help="cpu, cuda, cuda:N, mps or auto.")
DataRootOpt = typer.Option(None, "--data-root", help="Dataset folder (default $BENCH_DATA or ~/.cache/bench/data).")
ListingFormatOpt = typer.Option("table", "--format", help="table, json or csv.")
TrustCodeOpt = typer.Option([], "--trust-code", help="Let cards run Python code (weights.entry_point) from this "
                                                      "package; repeat for more (also $BENCH_TRUST_CODE).")


def friendly(fn: Callable) -> Callable:
    """Print BenchErrors as two lines, without a traceback unless --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BenchError as err:
            if debug["on"]:
                raise
            console.print(f"[bold red]error:[/] {err.problem}", highlight=False, markup=True, soft_wrap=True)
            if err.fix:
                console.print(f"  [bold]fix:[/] {err.fix}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("interrupted: finished shards are saved; rerun the same command to resume")
            raise typer.Exit(130) from None

    return wrapper


def print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        console.print(f"warning: {warning}", highlight=False, soft_wrap=True)


def check_listing_format(fmt: str) -> None:
    if fmt not in LISTING_FORMATS:
        raise BenchError(f"unknown format {fmt!r}", f"use one of {', '.join(LISTING_FORMATS)}")


def print_listing(title: str, columns: list[str], rows: list[list[str]], fmt: str,
                  records: list[dict] | None = None) -> None:
    """A catalogue listing: a rich table on a terminal, plain aligned text in a pipe (never wrapped, so an id
    stays on one line for grep), CSV rows, or JSON: ``records`` (structured fields: lists, objects, booleans)
    where given, else one object per row."""
    check_listing_format(fmt)
    if fmt == "json":
        typer.echo(json.dumps(records if records is not None else [dict(zip(columns, row)) for row in rows],
                              indent=2))
    elif fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows(rows)
        typer.echo(out.getvalue(), nl=False)
    elif sys.stdout.isatty():
        from rich.table import Table

        table = Table(title=title)
        for i, column in enumerate(columns):
            table.add_column(column, no_wrap=i == 0, overflow="fold")
        for row in rows:
            table.add_row(*row, style="red" if row[-1].startswith("invalid") else None)
        Console().print(table)
    else:
        from tabulate import tabulate

        typer.echo(tabulate(rows, headers=columns, tablefmt="plain", disable_numparse=True))


def warn_broken_families(known: dict[str, str] | None = None) -> None:
    """Say which method families failed to import (on stderr, so a piped listing stays clean): in this process,
    and those ``known`` to a kept listing (``bench.cli.listings``)."""
    from bench.registry import broken_families

    for name, error in {**(known or {}), **broken_families()}.items():
        console.print(f"warning: the method family {name} cannot be imported ({error}); its cards are listed as "
                      "invalid and every other family works", highlight=False, soft_wrap=True)


def check_model_card(model: str) -> None:
    """Read and validate the model card ``bench run`` was given (an id or a YAML file): an unknown id (with a
    did-you-mean) or an invalid card is an error before torch and the run machinery are imported."""
    from bench.models.card import load_model_card

    load_model_card(model)
