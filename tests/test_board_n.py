"""The board marks a row evaluated on fewer points than the largest run of its table (markdown: a marker and
a note naming the n; csv and json: fields), and a filter naming no card, family, dataset or stored run is an
error with a did-you-mean, not an empty board."""
from __future__ import annotations

import copy
import io
import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from bench.cli import app
from bench.leaderboard import build_board, render
from bench.run import evaluate
from bench.store import Store
from conftest import threat


@pytest.fixture(scope="module")
def two_sizes(digits_model, tmp_path_factory):
    """One protocol: model a on 60 points, model b on 30."""
    root = tmp_path_factory.mktemp("two-sizes")
    card = threat("pgd", "pgd-digits", norm="Linf", eps=0.05, steps=2)
    kw = dict(dataset="digits", batch_size=30, progress=False, results=root)
    evaluate(digits_model, card, n=60, model_name="a", **kw)
    other = copy.deepcopy(digits_model)
    with torch.no_grad():
        other[-1].bias.add_(0.5)
    evaluate(other, card, n=30, model_name="b", **kw)
    return root


def test_a_row_with_a_smaller_n_is_marked_in_every_format(two_sizes):
    board = build_board(Store(two_sizes))
    markdown = render(board, "markdown")
    rows = {line.split("|")[2].strip(): line for line in markdown.splitlines() if line.startswith("|")}
    assert "30 *" in rows["b"] and "*" not in rows["a"].replace("robust", "")
    assert "note: * n differs: b (n = 30) evaluated fewer points than the largest run here (n = 60)" in markdown
    csv = pd.read_csv(io.StringIO(render(board, "csv")))
    assert dict(zip(csv.model, csv.n_differs)) == {"a": False, "b": True}
    assert set(csv.largest_n) == {60}
    records = {r["model"]: r for r in json.loads(render(board, "json"))}
    assert records["b"]["n_differs"] is True and records["a"]["n_differs"] is False
    assert records["b"]["largest_n"] == 60 and records["b"]["n"] == 30


def test_a_table_of_one_n_has_no_mark(digits_model, tmp_path):
    evaluate(digits_model, threat("clean"), n=30, dataset="digits", progress=False, results=tmp_path)
    board = build_board(Store(tmp_path))
    assert "n differs" not in render(board, "markdown") and not json.loads(render(board, "json"))[0]["n_differs"]


def test_board_filters_with_a_typo_are_errors_with_a_did_you_mean(two_sizes):
    runner = CliRunner()
    done = runner.invoke(app, ["board", "--results", str(two_sizes), "--threat", "pgd-digit"])
    assert done.exit_code == 2 and "did you mean 'pgd-digits'?" in done.output
    done = runner.invoke(app, ["board", "--results", str(two_sizes), "--dataset", "digts"])
    assert done.exit_code == 2 and "no dataset or stored run's dataset is called 'digts'" in done.output
    assert "did you mean 'digits'?" in done.output
    done = runner.invoke(app, ["board", "--results", str(two_sizes), "--dataset", "mnist"])  # known, no runs
    assert done.exit_code == 0 and "(no complete runs match)" in done.output
    done = runner.invoke(app, ["board", "--results", str(two_sizes), "--dataset", "digits", "--format", "csv"])
    assert done.exit_code == 0 and "n_differs" in done.output.splitlines()[0]


@pytest.mark.parametrize("command, default", [
    (["board"], "[default: markdown]"), (["models"], "[default: table]"), (["threats"], "[default: table]"),
    (["data", "list"], "[default: table]")])
def test_listing_help_keeps_its_defaults(command, default, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    done = CliRunner().invoke(app, [*command, "--help"])
    assert done.exit_code == 0 and default in done.output, done.output
