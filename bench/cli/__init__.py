"""The `bench` command line: run, train, board, models, threats, data, and each method family's commands."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from bench.cli.common import DataRootOpt, DeviceOpt, ListingFormatOpt, ResultsOpt, TrustCodeOpt, console, debug, \
    friendly, print_listing, print_warnings, warn_broken_families
from bench.errors import BenchError


class _RootCommands(TyperGroup):
    """The built-in commands, and each method family's `bench COMMAND ...` from the family index: a family's
    commands are imported only when used (or listed by --help), and a family that cannot be imported gets a
    command that says why instead of breaking the others."""

    def list_commands(self, ctx) -> list[str]:
        from bench.registry import families

        return [*super().list_commands(ctx), *(f.command for f in families() if f.command)]

    def get_command(self, ctx, name: str):
        from bench.registry import families

        command = super().get_command(ctx, name)
        family = next((f for f in families() if f.command == name), None)
        if command is None and family is not None:
            command = self.commands[name] = _family_command(family)
        return command


def _family_command(family) -> object:
    """The click command of a family's typer app, or one that reports the family's import error."""
    try:
        command = typer.main.get_group(importlib.import_module(f"{family.package}.cli").app)
    except Exception as err:  # noqa: BLE001  (any import failure makes only this family's commands unusable)
        problem = f"{type(err).__name__}: {err}"
        sub = typer.Typer(add_completion=False, rich_markup_mode=None)

        @sub.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                     help=f"(unavailable: the family {family.name} cannot be imported)")
        def unavailable() -> None:
            console.print(f"[bold red]error:[/] the method family {family.name} cannot be imported ({problem})",
                          highlight=False, markup=True, soft_wrap=True)
            console.print("  [bold]fix:[/] install what it needs, or fix it; every other command still works",
                          highlight=False, soft_wrap=True)
            raise typer.Exit(2)

        command = typer.main.get_command(sub)
    command.name = family.command
    return command


app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, cls=_RootCommands,
                  rich_markup_mode=None,
                  help="bench: robustness evaluation of image classifiers and generative models.")
data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="List and fetch datasets.")
app.add_typer(data_app, name="data")
leaderboard_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                              help="Leaderboard entries (the top-level leaderboard/ folder).")
app.add_typer(leaderboard_app, name="leaderboard")


def _version(asked: bool) -> None:
    if asked:
        from bench import __version__

        typer.echo(f"bench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(debug_flag: bool = typer.Option(False, "--debug", help="Show full tracebacks."),
          verbose: bool = typer.Option(False, "--verbose", help="Print the attack packages' own logs as they run "
                                       "(e.g. AutoAttack's per-attack lines)."),
          version: bool = typer.Option(False, "--version", help="Print bench's version and exit.", is_eager=True,
                                       callback=_version)) -> None:
    debug["on"] = debug_flag
    if verbose:
        import logging

        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logging.getLogger("auto-attack").addHandler(handler)  # AutoAttack's own log, beside our progress bar


@app.command()
@friendly
def run(model: str = typer.Option(..., "--model", "-m", help="Model card id, path to a card YAML, or a RobustBench "
                                  "zoo model: robustbench:NAME[:DATASET:THREAT]."),
        threat: str = typer.Option(..., "--threat", "-t",
                                   help="Threat card id, path to a card YAML, or a threat family (its default card "
                                        "for the model's dataset)."),
        eps: Optional[str] = typer.Option(None, "--eps", help="Run the threat at this radius, on any dataset the "
                                          "model takes: a number or a fraction such as 8/255 (a card derived from "
                                          "--threat, with its own id and protocol hash)."),
        norm: Optional[str] = typer.Option(None, "--norm", help="Run the threat in this norm: Linf, L2 or L1 (as "
                                           "the family takes; `bench threats` says which)."),
        dataset: Optional[str] = typer.Option(None, "--dataset", help="Test split to evaluate on [default: the "
                                              "model card's dataset]; another with the same classes is a dataset "
                                              "shift (e.g. digits28 for an MNIST model)."),
        n: Optional[int] = typer.Option(None, "--n", help="Evaluation points (a fixed subset of the test split) "
                                                           "[default: 1000, or the whole split if smaller]."),
        seed: int = typer.Option(0, "--seed", help="Seed of every random choice in the attack."),
        device: str = DeviceOpt,
        batch_size: int = typer.Option(500, "--batch-size", help="Points per batch (one store shard each; part "
                                                                  "of the run's identity)."),
        threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads per process (part of the run's "
                                              "numerics) [default: torch's, or the cores shared by --workers]."),
        executor: str = typer.Option("local", "--executor", help="Where shards run: local (this process), processes "
                                     "(one worker per GPU, or --workers CPU workers) or ray (a Ray cluster)."),
        workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes for --executor processes."),
        address: Optional[str] = typer.Option(None, "--address", help="Ray cluster for --executor ray: auto or "
                                              "HOST:PORT [default: a local cluster]."),
        results: Optional[Path] = ResultsOpt, data_root: Optional[Path] = DataRootOpt,
        trust_code: list[str] = TrustCodeOpt,
        check_convergence: bool = typer.Option(False, "--check-convergence", help="Then attack a seeded subset of "
                                               "the surviving points again with twice the budget (steps, restarts, "
                                               "samples) and say whether robust accuracy drops."),
        convergence_points: int = typer.Option(200, "--convergence-points", min=1,
                                               help="Surviving points the convergence check attacks at most."),
        save_adv: bool = typer.Option(False, "--save-adv", help="Store each point's adversarial input beside its "
                                      "rows (compressed; bench.saved_inputs(run_id) reads them back), to check or "
                                      "re-score the evaluation elsewhere."),
        no_train: bool = typer.Option(False, "--no-train", help="Fail at once, naming what to train, instead of "
                                      "training a card whose weights are neither cached nor shipped."),
        json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON.")) -> None:
    """Evaluate a model against a threat; resumes an interrupted run of the same arguments."""
    import json
    from dataclasses import asdict

    from bench.cli.common import check_model_card

    check_model_card(model)  # an unknown or invalid card fails here, before torch is imported
    from bench.run import evaluate

    progress = sys.stderr.isatty() or not json_out
    args = dict(dataset=dataset, n=n, seed=seed, device=device, batch_size=batch_size, threads=threads,
                data_root=data_root, eps=eps, norm=norm)
    if check_convergence:
        from bench.convergence import check_convergence as check
        from bench.convergence import planned_check

        planned = planned_check(model, threat, **args)  # refuses a threat it does not apply to before anything runs
    summary = evaluate(model, threat, executor=executor, workers=workers, address=address, results=results,
                       trust_code=tuple(trust_code), progress=progress, train=not no_train, save_adv=save_adv, **args)
    checked = None
    if check_convergence:
        checked = check(summary, model=model, threat=threat, points=convergence_points, results=results,
                        progress=progress, planned=planned, **args)
    if json_out:
        typer.echo(json.dumps({**summary.to_dict(), **({"convergence": asdict(checked)} if checked else {})},
                              indent=2))
    else:
        typer.echo(str(summary) + (f"\n{checked}" if checked else ""))
        from bench.leaderboard.table import derived_lines
        from bench.store import Store

        for line in derived_lines(Store(results), summary):
            typer.echo(line)
        if save_adv:
            typer.echo(f"adversarial inputs  {Path(summary.results) / 'runs' / summary.run_id}/inputs-*.npz "
                       f"(bench.saved_inputs({summary.run_id!r}, results=...) reads them)")


@app.command()
@friendly
def check(model: str = typer.Option(..., "--model", "-m", help="Model card id, path to a card YAML, or a RobustBench "
                                    "zoo model: robustbench:NAME[:DATASET:THREAT]."),
          baseline: list[str] = typer.Option(..., "--baseline", "-b", help="A baseline: a run id in --results, a run "
                                             "folder (<results>/runs/<run_id>) or a leaderboard entry (.json); "
                                             "repeat for more."),
          threat: list[str] = typer.Option([], "--threat", "-t", help="The protocol each baseline must be (in "
                                           "order) [default: each baseline's own]."),
          tolerance: Optional[float] = typer.Option(None, "--tolerance", help="Drop (in points for rates) a "
                                                    "significant regression must exceed [default: one evaluation "
                                                    "point for rates, 0 for means]."),
          alpha: float = typer.Option(0.05, "--alpha", help="Significance level of the one-sided paired tests."),
          junit_file: Optional[Path] = typer.Option(None, "--junit", help="Also write a JUnit XML report here."),
          json_out: bool = typer.Option(False, "--json", help="Print the results as JSON."),
          device: str = DeviceOpt, results: Optional[Path] = ResultsOpt, trust_code: list[str] = TrustCodeOpt) -> None:
    """Gate CI on robustness: rerun the model on each baseline's exact question and compare point by point.
    Exit code 0: no headline regressed significantly; 1: one did; 2: the runs cannot be compared."""
    import json

    from bench.check import check as run_check
    from bench.check import exit_code, junit

    if threat and len(threat) != len(baseline):
        raise BenchError(f"{len(threat)} --threat for {len(baseline)} --baseline", "give one --threat per "
                         "--baseline, in the same order, or none")
    outcomes = [run_check(model, b, threat=t, results=results, tolerance=tolerance, alpha=alpha, device=device,
                          trust_code=tuple(trust_code), progress=sys.stderr.isatty() and not json_out)
                for b, t in zip(baseline, threat or [None] * len(baseline))]
    if junit_file is not None:
        junit_file.write_text(junit(outcomes))
    typer.echo(json.dumps([o.to_dict() for o in outcomes], indent=2) if json_out
               else "\n\n".join(str(o) for o in outcomes))
    raise typer.Exit(exit_code(outcomes))


SpotOpt = typer.Option(0.1, "--spot", help="Share of the run's shards (batches) a spot check recomputes (at "
                       "least one).")
SpotSeedOpt = typer.Option(0, "--spot-seed", help="Seed choosing the recomputed shards.")


@app.command()
@friendly
def submit(card: str = typer.Argument(..., help="The model card (id or YAML path) to submit."),
           claimed: Optional[Path] = typer.Option(None, "--claimed", help="Numbers computed elsewhere: a complete "
                                                  "run's folder (<results>/runs/<run_id>) or a leaderboard entry "
                                                  "(.json); spot-checked, then written as a self-reported entry."),
           out: Path = typer.Option(Path("leaderboard"), "--out", help="The leaderboard folder."),
           protocols: Optional[Path] = typer.Option(None, "--protocols", help="The protocols file [default: "
                                                    "OUT/protocols.yaml]."),
           n: Optional[int] = typer.Option(None, "--n", help="Evaluation points per protocol [default: 1000]."),
           seed: int = typer.Option(0, "--seed"), batch_size: int = typer.Option(500, "--batch-size"),
           threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (part of the numerics)."),
           spot: float = SpotOpt, spot_seed: int = SpotSeedOpt, device: str = DeviceOpt,
           results: Optional[Path] = ResultsOpt, trust_code: list[str] = TrustCodeOpt) -> None:
    """Submit a model to the leaderboard: check its card (licence, weights sha256, safetensors only, no code
    without --trust-code), then run every protocol OUT/protocols.yaml asks of its dataset and task (resumable)
    and write verified entries; or, with --claimed, spot-check numbers computed elsewhere. Exit code 1: the
    claim was refused."""
    from bench.leaderboard.submit import submit as run_submit
    from bench.leaderboard.submit import submit_claim

    if claimed is None:
        written, skipped = run_submit(card, out=out, protocols=protocols, n=n, seed=seed, batch_size=batch_size,
                                      threads=threads, device=device, results=results,
                                      trust_code=tuple(trust_code), progress=sys.stderr.isatty())
        typer.echo("\n".join([f"verified entry: {p}" for p in written] +
                             [f"not applicable: {t} ({why})" for t, why in skipped.items()]))
        return
    outcome, path = submit_claim(card, claimed, out=out, fraction=spot, seed=spot_seed, device=device,
                                 results=results, trust_code=tuple(trust_code))
    typer.echo(str(outcome))
    if path is None:
        raise typer.Exit(1)
    typer.echo(f"self-reported entry: {path}")


@leaderboard_app.command("verify")
@friendly
def leaderboard_verify(entries: list[Path] = typer.Argument(None, help="Entry files [default: those changed since "
                                                            "--since, else all]."),
                       leaderboard: Path = typer.Option(Path("leaderboard"), "--leaderboard",
                                                        help="The leaderboard folder."),
                       since: Optional[str] = typer.Option(None, "--since", help="Verify the entries changed since "
                                                           "this git revision (e.g. origin/main)."),
                       spot: float = SpotOpt, spot_seed: int = SpotSeedOpt,
                       json_out: bool = typer.Option(False, "--json", help="Print the results as JSON."),
                       device: str = DeviceOpt, results: Optional[Path] = ResultsOpt,
                       trust_code: list[str] = TrustCodeOpt) -> None:
    """Check leaderboard entries as a pull request's CI job: schema, place, self-consistency, current code,
    the card's submission rules, and a spot check recomputing a seeded subset of shards point by point.
    Exit code 1 when any entry fails."""
    import json

    from bench.leaderboard.verify import all_entries, changed_entries, verify_entry

    if not 0 < spot <= 1:
        raise BenchError(f"--spot must be in (0, 1], got {spot}", "pass e.g. --spot 0.1")
    paths = list(entries or []) or (changed_entries(leaderboard, since) if since else all_entries(leaderboard))
    checks = [verify_entry(p, leaderboard, fraction=spot, seed=spot_seed, device=device, results=results,
                           trust_code=tuple(trust_code)) for p in paths]
    typer.echo(json.dumps([c.to_dict() for c in checks], indent=2) if json_out
               else "\n".join(str(c) for c in checks) or "no entries to verify")
    raise typer.Exit(0 if all(c.accepted for c in checks) else 1)


@leaderboard_app.command("entries")
@friendly
def leaderboard_entries(out: Path = typer.Option(Path("leaderboard"), "--out", help="The leaderboard folder."),
                        results: Optional[Path] = ResultsOpt) -> None:
    """Write a verified entry for the run the board shows of every model card, protocol and dataset in the
    results (OUT/entries/<dataset>/<model>--<hash>--<protocol>.json)."""
    from bench.leaderboard.entries import write_entries
    from bench.store import Store

    warnings: list[str] = []
    written = write_entries(Store(results), out, warnings)
    print_warnings(warnings)
    typer.echo("\n".join(str(p) for p in written) or "no entries written")


@leaderboard_app.command("import-robustbench")
@friendly
def leaderboard_import(model_info: Path = typer.Argument(..., help="RobustBench's model_info folder."),
                       out: Path = typer.Option(Path("leaderboard"), "--out", help="The leaderboard folder.")) -> None:
    """Import RobustBench's <dataset>/<threat_model>/<Model>.json files as imported entries (no n, seed or
    per-point outcomes: RobustBench records none; the original record is kept in the entry's source)."""
    from bench.leaderboard.robustbench import import_robustbench

    warnings: list[str] = []
    written = import_robustbench(model_info, out, warnings)
    print_warnings(warnings)
    typer.echo(f"{len(written)} entries imported under {out / 'entries'}")


@leaderboard_app.command("export-robustbench")
@friendly
def leaderboard_export(out: Path = typer.Option(..., "--out", help="The model_info folder to write."),
                       entries: Path = typer.Option(Path("leaderboard"), "--entries", help="The leaderboard "
                                                    "folder.")) -> None:
    """Write our AutoAttack and corruption entries as RobustBench model_info files (our n, seed, intervals and
    identities have no field there and are dropped; the footnote names n, seed and protocol)."""
    from bench.leaderboard.robustbench import export_robustbench

    warnings: list[str] = []
    written = export_robustbench(sorted(entries.glob("entries/*/*.json")), out, warnings)
    print_warnings(warnings)
    typer.echo(f"{len(written)} model_info files written under {out}")


@leaderboard_app.command("site")
@friendly
def leaderboard_site(out: Path = typer.Option(..., "--out", help="The folder to write the site into."),
                     entries: Path = typer.Option(Path("leaderboard"), "--entries", help="The leaderboard folder."),
                     cards: Optional[Path] = typer.Option(None, "--cards", help="The folder relative card references "
                                                          "in protocol cards resolve from (entries do not record it; "
                                                          "without it such protocols' code is 'unknown').")) -> None:
    """Render a static HTML site from ENTRIES/entries/**.json: a page per dataset and threat family (a ranked,
    sortable table per protocol), a page per model, plots; no network, it opens from file://."""
    from bench.leaderboard.site import build_site

    pages = build_site(entries, out, cards)
    typer.echo(f"{len(pages)} pages written; open {pages[0]}")


@leaderboard_app.command("schema")
@friendly
def leaderboard_schema(out: Optional[Path] = typer.Option(None, "--out", help="Write it here instead of "
                                                          "printing it.")) -> None:
    """The JSON Schema of a leaderboard entry (committed as leaderboard/schema/entry.schema.json)."""
    from bench.leaderboard.entries import entry_schema

    if out is None:
        typer.echo(entry_schema(), nl=False)
    else:
        out.write_text(entry_schema())


@app.command()
@friendly
def train(card: str = typer.Argument(..., help="Model card id or path."), device: str = DeviceOpt,
          fresh: bool = typer.Option(False, "--fresh", help="Discard an interrupted run's checkpoint."),
          data_root: Optional[Path] = DataRootOpt, results: Optional[Path] = ResultsOpt) -> None:
    """Train a card's recipe into the cache; compare with the weights the card or the suite ships, if any."""
    from bench.models import from_file, load_model_card
    from bench.models.weights import sha256_file
    from bench.devices import resolve_device
    from bench.tasks import TASKS
    from bench.training import train as train_card
    from bench.models.prebuilt import prebuilt_path

    model_card = load_model_card(card)
    dev = resolve_device(device)
    path = train_card(model_card, device=dev, data_root=data_root, fresh=fresh, results=results)
    typer.echo(f"trained weights  {path}\nsha256           {sha256_file(path)}")
    task = TASKS.get(model_card.task)
    rows = [("trained", task.trained_summary(model_card, from_file(model_card, path, device=dev), dev))]
    shipped = model_card.weights_path if model_card.weights_path is not None else prebuilt_path(model_card)
    if shipped is not None and shipped.is_file():
        rows.append(("shipped", task.trained_summary(model_card, from_file(model_card, shipped, device=dev), dev)))
    for name, metrics in rows:
        typer.echo(f"{name:8s}         " + "   ".join(
            f"{k} {v:.2%}" if k.endswith("_acc") else f"{k} {v:.4g}" for k, v in metrics.items()))


@app.command()
@friendly
def perf(model: str = typer.Option(..., "--model", "-m", help="Model card id or path (its weights trained or "
                                   "shipped: perf trains nothing)."),
         n: int = typer.Option(200, "--n", help="Evaluation points (the first of the suite's subset)."),
         eps: str = typer.Option(..., "--eps", help="Radius, e.g. 0.3 or 8/255."),
         norm: str = typer.Option("Linf", "--norm", help="Linf, L2 or L1."),
         version: str = typer.Option("standard", "--version", help="AutoAttack version: standard, plus or rand."),
         attacks: list[str] = typer.Option([], "--attack", help="Only these stages (repeat; version custom: "
                                           "apgd-ce, apgd-dlr, apgd-t, fab, fab-t, square)."),
         engines: list[str] = typer.Option(["bench", "official", "torchattacks-100", "torchattacks"], "--engine",
                                           help="Engines to time (repeat the option): bench, bench-compiled "
                                           "(torch.compile on fixed-shape batches; CUDA graphs on a GPU), official, "
                                           "torchattacks-100, torchattacks."),
         threads: int = typer.Option(0, "--threads", help="CPU threads per engine [default: torch's]."),
         repeats: int = typer.Option(1, "--repeat", min=1, help="Timed runs per engine: the median is reported, "
                                     "with the range of all (the machine's speed moves between runs)."),
         batch_size: int = typer.Option(0, "--batch-size", min=0, help="Points attacked at once (bench and official "
                                        "engines) [default: all]."),
         device: str = DeviceOpt) -> None:
    """Time AutoAttack engines on the same points: examples/s, peak memory, and each stage against its pass-count
    limit (the model's own forward and forward+backward throughput, measured in the same run)."""
    from bench.devices import resolve_device
    from bench.perf import perf as measure
    from bench.threats.aa_engine.perf import ENGINES, table
    from bench.threats.override import parse_eps

    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise BenchError(f"unknown engine {unknown[0]!r}", f"choose from: {', '.join(ENGINES)}")
    if norm not in ("Linf", "L2", "L1"):
        raise BenchError(f"unknown norm {norm!r}", "use Linf, L2 or L1")
    radius = parse_eps(eps)
    if isinstance(radius, str):
        raise BenchError(f"--eps {eps!r} is not a number", "give a radius such as 0.3 or 8/255")
    import torch

    dev, threads = str(resolve_device(device)), threads or torch.get_num_threads()
    measures = measure(model, engines, n=n, norm=norm, eps=radius, version="custom" if attacks else version,
                       device=dev, threads=threads, attacks=attacks or None, repeats=repeats,
                       batch_size=batch_size or None)
    what = f"custom {', '.join(attacks)}" if attacks else version
    how = f", {repeats} timed runs each" * (repeats > 1) + f", batches of {batch_size}" * bool(batch_size)
    typer.echo(f"{model}, {n} points, {norm} eps {eps}, AutoAttack {what}, on {dev} ({threads} threads{how})\n")
    typer.echo(table(measures))


@app.command()
@friendly
def board(dataset: Optional[str] = typer.Option(None, "--dataset", help="Only this dataset."),
          threat: Optional[str] = typer.Option(None, "--threat", help="Only this threat card id, or family."),
          fmt: str = typer.Option("markdown", "--format", help="markdown, csv or json."),
          results: Optional[Path] = ResultsOpt) -> None:
    """Print the leaderboard from the results store: one table per dataset and protocol. A row evaluated on fewer
    points than the largest run in its table is marked (*, a note names the n; csv and json: n_differs)."""
    from bench.leaderboard import FORMATS, build_board, render
    from bench.store import Store

    if fmt not in FORMATS:
        raise BenchError(f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    result = build_board(Store(results), dataset, threat)
    print_warnings(result.warnings)
    typer.echo(render(result, fmt))


@app.command()
@friendly
def models(task: Optional[str] = typer.Option(None, "--task", help="Only cards of this task."),
           fmt: str = ListingFormatOpt) -> None:
    """List the model cards (cards that cannot be read are listed with their error); JSON adds each card's
    hash."""
    from bench.cli.common import check_listing_format
    from bench.cli.listings import MODEL_COLUMNS, model_listing, model_row

    check_listing_format(fmt)
    records, broken = model_listing(task, hashes=fmt == "json")  # a hash may need a family's recipe (and torch)
    print_listing("model cards", MODEL_COLUMNS, [model_row(r) for r in records], fmt, records)
    warn_broken_families(broken)


@app.command()
@friendly
def threats(task: Optional[str] = typer.Option(None, "--task", help="Only threats for models of this task."),
            fmt: str = ListingFormatOpt) -> None:
    """List the threat cards and families (cards that cannot be read are listed with their error)."""
    from bench.cli.common import check_listing_format
    from bench.cli.listings import THREAT_COLUMNS, threat_json, threat_listing, threat_row

    check_listing_format(fmt)
    records, footer, broken = threat_listing(task)  # kept between runs: it needs every family's code
    print_listing("threat cards", THREAT_COLUMNS, [threat_row(r) for r in records], fmt,
                  [threat_json(r) for r in records])
    if fmt == "table":
        typer.echo("\n".join(footer))
    warn_broken_families(broken)


@data_app.command("list")
@friendly
def data_list(data_root: Optional[Path] = DataRootOpt, fmt: str = ListingFormatOpt) -> None:
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
    print_listing("datasets", ["name", "status"], rows, fmt)


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


@data_app.command("make")
@friendly
def data_make(name: str = typer.Argument(..., help="What to generate: cifar10-c or mnist-c."),
              seed: int = typer.Option(0, "--seed", help="Seed of the random corruptions."),
              data_root: Optional[Path] = DataRootOpt) -> None:
    """Generate a corrupted test set with bench's library, in the published layout, in a folder named
    <name>-generated and marked GENERATED.json: an equivalent of the published files, never passed off as them.
    Interrupted makes resume."""
    from bench.data import MAKERS

    folder = MAKERS.get(name, "bench data make")(root=data_root, seed=seed, progress=True)
    typer.echo(f"generated (not the published files) in {folder}")


def main() -> None:
    app()
