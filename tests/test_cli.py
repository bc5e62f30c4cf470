"""The command line, as a user types it: clear errors, no tracebacks, every subcommand works."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bench.cli import app
from conftest import write_threat


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich tables wrap long ids at the default 80
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_unknown_threat_suggests_the_right_one(cli):
    r = cli("run", "--model", "mnist-cnn-pgd-at", "--threat", "autoattack-linf-03")
    assert r.exit_code == 2
    assert "did you mean 'autoattack-linf-0.3'" in r.output
    assert "Traceback" not in r.output


def test_unknown_model_and_bad_device(cli):
    r = cli("run", "--model", "mnist-cnn-standrd", "--threat", "clean")
    assert r.exit_code == 2 and "did you mean 'mnist-cnn-standard'" in r.output
    r = cli("run", "--model", "mnist-cnn-pgd-at", "--threat", "clean", "--device", "quantum")
    assert r.exit_code == 2 and "unknown device" in r.output


def test_debug_shows_the_traceback(cli):
    r = cli("--debug", "run", "--model", "nope", "--threat", "clean")
    assert r.exit_code != 0 and r.exception is not None and "unknown model" in str(r.exception)


def test_run_then_board(cli, digits_card, tmp_path):
    pgd = write_threat(tmp_path, "pgd", norm="Linf", eps=0.1, steps=5)
    r = cli("run", "--model", digits_card, "--threat", pgd, "--n", 60, "--batch-size", 25, "--results", tmp_path / "r")
    assert r.exit_code == 0, r.output
    assert "robust accuracy" in r.output and "95% Wilson interval" in r.output and "examples/s" in r.output
    r = cli("run", "--model", digits_card, "--threat", pgd, "--n", 60, "--results", tmp_path / "r", "--json")
    summary = json.loads(r.output[r.output.index("{"):])
    assert summary["n"] == 60 and 0 <= summary["robust_acc"] <= summary["clean_acc"]
    r = cli("board", "--results", tmp_path / "r", "--format", "json")
    assert r.exit_code == 0
    assert [row["model"] for row in json.loads(r.output)] == ["digits-cnn"]
    r = cli("board", "--results", tmp_path / "r")
    header = next(line for line in r.output.splitlines() if line.startswith("|"))
    assert [c.strip() for c in header.strip("|").split("|")][:4] == ["rank", "model", "clean", "robust"]
    r = cli("board", "--results", tmp_path / "r", "--format", "xml")
    assert r.exit_code == 2 and "unknown format" in r.output


def test_board_without_results_is_a_clear_error(cli, tmp_path):
    r = cli("board", "--results", tmp_path / "empty")
    assert r.exit_code == 2 and "no results under" in r.output and "bench run" in r.output


def test_catalogue_listings(cli):
    r = cli("models")
    assert r.exit_code == 0 and "mnist-cnn-pgd-at" in r.output and "mnist-cnn-standard" in r.output
    r = cli("threats")
    assert r.exit_code == 0 and "autoattack-linf-0.3" in r.output and "autoattack-linf-8/255" in r.output


def test_data_list_and_download_errors(cli, tmp_path):
    r = cli("data", "list", "--data-root", tmp_path)
    assert r.exit_code == 0 and "ok: 10000 test images" in r.output and "cifar10" in r.output
    r = cli("data", "download", "mnist")
    assert r.exit_code == 2 and "ship in packages" in r.output


def test_train_prints_the_weights_and_their_accuracy(cli, tmp_path):
    card = tmp_path / "tiny.yaml"
    card.write_text("id: tiny\ndataset: digits\narchitecture: {name: small-cnn, kwargs: {input_size: 8}}\n"
                    "recipe: {name: standard, seed: 0, params: {epochs: 2, lr: 0.003, batch_size: 64}}\n")
    r = cli("train", card, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "sha256" in r.output and "clean_acc" in r.output
