"""The command line, as a user types it: clear errors, no tracebacks, every subcommand works."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import bench
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
    summary = json.loads(r.stdout)
    assert summary["n"] == 60 and 0 <= summary["robust_acc"] <= summary["clean_acc"]
    r = cli("board", "--results", tmp_path / "r", "--format", "json")
    assert r.exit_code == 0
    assert [row["model"] for row in json.loads(r.stdout)] == ["digits-cnn"]
    r = cli("board", "--results", tmp_path / "r")
    header = next(line for line in r.output.splitlines() if line.startswith("|"))
    assert [c.strip() for c in header.strip("|").split("|")][:6] == ["rank", "model", "hash", "clean_acc (%)",
                                                                      "robust_acc (%)", "95% interval"]
    r = cli("board", "--results", tmp_path / "r", "--format", "xml")
    assert r.exit_code == 2 and "unknown format" in r.output
    r = cli("board", "--results", tmp_path / "r", "--threat", "pdg")  # a typo: said, not an empty board
    assert r.exit_code == 2 and "no threat card, family or stored run is called 'pdg'" in r.output
    assert "did you mean 'pgd'?" in r.output
    for known in ("pgd", "test-pgd", "autoattack-linf-0.3"):  # a family, a stored run's card, a card not run
        r = cli("board", "--results", tmp_path / "r", "--threat", known)
        assert r.exit_code == 0 and ("digits-cnn" in r.output) == (known != "autoattack-linf-0.3"), r.output


def test_board_without_results_is_a_clear_error(cli, tmp_path):
    r = cli("board", "--results", tmp_path / "empty")
    assert r.exit_code == 2 and "no results under" in r.output and "bench run" in r.output


def test_catalogue_listings(cli):
    r = cli("models")
    assert r.exit_code == 0 and "mnist-cnn-pgd-at" in r.output and "mnist-cnn-standard" in r.output
    r = cli("threats")
    assert r.exit_code == 0 and "autoattack-linf-0.3" in r.output and "autoattack-linf-8/255" in r.output
    assert "families (`bench run --threat FAMILY` runs its default card)" in r.output


@pytest.mark.parametrize("command", ["models", "threats"])
def test_listings_survive_a_pipe_and_have_machine_formats(command, monkeypatch):
    """Piped output (not a terminal) keeps every id whole on one line, whatever the width."""
    monkeypatch.setenv("COLUMNS", "60")
    runner = CliRunner()
    ids = bench.list_models() if command == "models" else bench.list_threats()
    text = runner.invoke(app, [command]).output
    lines = text.splitlines()
    for card_id in ids:
        assert any(line.split()[:1] == [card_id] for line in lines), card_id  # like `grep ^id`
    records = json.loads(runner.invoke(app, [command, "--format", "json"]).stdout)
    assert {r["id"] for r in records} == set(ids)
    csv = runner.invoke(app, [command, "--format", "csv"]).stdout.splitlines()
    assert csv[0].startswith("id,") and len(csv) == len(ids) + 1
    bad = runner.invoke(app, [command, "--format", "yaml"])
    assert bad.exit_code == 2 and "unknown format" in bad.output


def test_listings_filter_by_task(cli):
    r = cli("threats", "--task", "perturbation-set", "--format", "json")
    assert {t["family"].split()[0] for t in json.loads(r.stdout)} == {"set-quality"}
    r = cli("models", "--task", "perturbation-set", "--format", "json")
    assert {m["task"] for m in json.loads(r.stdout)} == {"perturbation-set"} and len(json.loads(r.stdout)) >= 3


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


def test_run_on_another_dataset_with_the_same_classes_takes_the_whole_smaller_split(cli, tmp_path):
    r = cli("run", "--model", "mnist-cnn-pgd-at", "--threat", "clean", "--dataset", "digits28", "--results", tmp_path,
            "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["dataset"] == "digits28" and summary["n"] == 500  # the default 1000 capped at the split
    assert 0.5 < summary["clean_acc"] < 1
    r = cli("run", "--model", "mnist-cnn-pgd-at", "--threat", "clean", "--dataset", "digits28", "--n", 600)
    assert r.exit_code != 0 and "500" in r.output


@pytest.mark.parametrize("command, default", [
    (["submit"], "[default: OUT/protocols.yaml]"), (["run"], "[default: the model card's dataset]"),
    (["leaderboard", "verify"], "[default: those changed since --since, else all]"),
    (["perturbation", "report"], "store, resumable [default: bench-results/report-SETTING]")])
def test_help_keeps_the_defaults_written_in_brackets(cli, command, default):
    """Help text is not read as rich markup, which took "[default: ...]" for a tag and dropped it."""
    done = cli(*command, "--help")
    assert done.exit_code == 0 and default.replace(" ", "") in "".join(done.output.split()), done.output


def test_version(cli):
    done = cli("--version")
    assert done.exit_code == 0 and done.output.strip() == f"bench {bench.__version__}"


def test_a_family_without_a_default_for_the_models_data_names_where_it_runs(cli):
    out = cli("run", "--model", "mnist-cnn-standard", "--threat", "learned-cvae", "--n", "5")
    assert out.exit_code == 2
    assert "mnist42 (`learned-cvae-rts-p50`" in out.output
    assert "`bench run --model mnist42-cnn-cvae-adv --threat learned-cvae`" in " ".join(out.output.split())
