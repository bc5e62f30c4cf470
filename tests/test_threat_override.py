"""Threats at a given eps and norm on any data (`bench run --threat pgd --eps 8/255 --norm Linf --dataset
folder:DIR`): eps parsing, the derived card's id and protocol hash, `datasets: [any]`, and the listing's words."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import bench
from bench.cli import app
from bench.data import load_dataset
from bench.errors import BenchError, CardError
from bench.store import Store
from bench.threats import ThreatCard, load_threat_card, resolve_threat
from bench.threats.override import eps_text, parse_eps, parse_norm


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def digits_folder(tmp_path) -> str:
    """`folder:DIR` with 3 of the digits test images per class, as 8x8 grayscale PNGs in DIR/<class>/."""
    from PIL import Image

    test = load_dataset("digits", "test")
    root = tmp_path / "my-digits"
    for label in range(10):
        (root / str(label)).mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(test.y.numpy() == label)[:3]):
            pixels = np.round(test.x[i, 0].numpy() * 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / str(label) / f"{k}.png")
    return f"folder:{root}"


def _runs(results: Path) -> list[dict]:
    store = Store(results)
    return [store.run_meta(run_id) for run_id in store.run_ids()]


# --- eps and norm as typed -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, value", [("8/255", 8 / 255), (" 8/255 ", 8 / 255), ("0.3", 0.3), ("2", 2.0),
                                         ("1e-2", 0.01), ("32/1020", 8 / 255), (0.5, 0.5), (1, 1.0)])
def test_eps_takes_decimals_and_fractions(text, value):
    assert parse_eps(text) == value and isinstance(parse_eps(text), float)


def test_eps_takes_a_named_radius_as_text():
    assert parse_eps("p75") == "p75"  # the learned sets' percentiles; the family's schema checks it


@pytest.mark.parametrize("text, problem", [("inf", "not a finite"), ("nan", "not a finite"), ("-inf", "not a finite"),
                                           ("1e400", "not a finite"), (math.nan, "not a finite"),
                                           ("1e999999999", "not a finite"), ("1" * 65, "characters long"),
                                           ("-0.1", "negative"), ("-8/255", "negative"), ("0", "no perturbation"),
                                           ("8/0", "divides by zero"), ("2**8", "not a number"),
                                           ("__import__('os').system('true')", "not a number"),
                                           ("8 / 255", "not a number"), ("", "not a number"),
                                           (True, "must be a number")])
def test_bad_eps_is_refused_clearly(text, problem):
    with pytest.raises(BenchError) as err:
        parse_eps(text)
    assert problem in err.value.problem and ("8/255" in err.value.fix or "--threat clean" in err.value.fix)


def test_norm_is_case_insensitive_and_checked():
    assert [parse_norm(n) for n in ("Linf", "linf", "L2", "l1")] == ["Linf", "Linf", "L2", "L1"]
    with pytest.raises(BenchError, match="unknown norm 'L3'"):
        parse_norm("L3")


def test_eps_words():
    assert [eps_text(e) for e in (8 / 255, 0.3, 2.0, 0.1, 1 / 3 + 1e-9, "p50")] == \
        ["8/255", "0.3", "2", "0.1", repr(1 / 3 + 1e-9), "p50"]


# --- the derived card: id and protocol hash --------------------------------------------------------------


def test_one_eps_spelled_two_ways_is_one_protocol_and_other_eps_are_others():
    fraction, _ = resolve_threat("pgd", dataset="mnist", eps="8/255", norm="Linf")
    decimal, _ = resolve_threat("pgd", dataset="mnist", eps="0.03137254901960784", norm="linf")
    number, _ = resolve_threat("pgd", dataset="folder:/elsewhere", eps=8 / 255, norm="Linf")
    assert fraction.id == decimal.id == number.id == "pgd@linf-8/255"
    assert fraction.hash == decimal.hash == number.hash
    assert fraction.params["eps"] == 8 / 255 and fraction.datasets == []  # any dataset
    other, _ = resolve_threat("pgd", dataset="mnist", eps="9/255", norm="Linf")
    l2, _ = resolve_threat("pgd", dataset="mnist", eps="8/255", norm="L2")
    card = load_threat_card("pgd-linf-0.3")
    assert len({fraction.hash, other.hash, l2.hash, card.hash}) == 4
    same, chosen = resolve_threat("pgd-linf-0.3", eps="0.3")  # the card's own ball: its protocol, another id
    assert chosen and same.id == "pgd-linf-0.3@linf-0.3" and same.hash == card.hash


def test_a_card_with_a_fixed_step_keeps_its_steps_per_radius():
    card, _ = resolve_threat("pgd-l2-2.0", eps="0.5")
    assert card.id == "pgd-l2-2.0@l2-0.5" and card.params["step_size"] == pytest.approx(0.1 * 0.5 / 2.0)
    assert "scaled with eps" in card.description and card.params["steps"] == 40


def test_the_derived_card_rebuilds_from_its_record_with_its_hash():
    card, _ = resolve_threat("autoattack", dataset="folder:/x", eps="8/255", norm="L1")
    assert card.id == "autoattack@l1-8/255"
    again = ThreatCard.model_validate({**card.model_dump(mode="json"), "source_dir": card.source_dir})
    assert again.hash == card.hash and again.datasets == []


def test_a_family_without_a_default_for_the_data_starts_from_its_cards():
    """folder data, tensors: the family's param defaults where eps and norm are all it needs (autoattack), else
    its default cards (pgd's MNIST card: the same protocol on every dataset)."""
    on_mnist, _ = resolve_threat("pgd", dataset="mnist", eps="0.1", norm="Linf")
    on_folder, _ = resolve_threat("pgd", dataset="folder:/x", eps="0.1", norm="Linf")
    on_tensors, _ = resolve_threat("pgd", dataset="tensors", eps="0.1", norm="Linf")
    assert on_mnist.hash == on_folder.hash == on_tensors.hash
    assert "pgd-linf-0.3" in on_folder.description
    auto, _ = resolve_threat("autoattack", dataset="folder:/x", eps="0.3", norm="Linf")
    assert auto.hash == load_threat_card("autoattack-linf-0.3").hash  # same params, same protocol


def test_a_card_naming_another_model_keeps_its_datasets():
    transfer, _ = resolve_threat("pgd-transfer-linf-0.3", eps="0.1")
    assert transfer.datasets == ["mnist"]  # its source model takes MNIST only


def test_families_without_eps_or_norm_refuse_them_naming_those_that_take_them():
    with pytest.raises(BenchError) as err:
        resolve_threat("clean", eps="0.1")
    assert "threat family clean has no eps" in err.value.problem
    assert "pgd" in err.value.fix and "autoattack (Linf, L2, L1)" in err.value.fix
    with pytest.raises(BenchError, match="has no norm"):
        resolve_threat("learned-cvae-rts-p50", norm="L2")
    with pytest.raises(BenchError) as err:
        resolve_threat("pgd", dataset="mnist", eps="0.1", norm="L1")
    assert "takes --norm Linf or L2, not L1" in err.value.problem and "autoattack" in err.value.fix
    with pytest.raises(BenchError, match="exceeds the \\[0, 1\\] image range"):
        resolve_threat("pgd", dataset="mnist", eps="8", norm="Linf")


# --- datasets: [any] -------------------------------------------------------------------------------------


def test_datasets_any_is_every_dataset(tmp_path):
    path = tmp_path / "pgd-anywhere.yaml"
    path.write_text("id: pgd-anywhere\nfamily: pgd\ndatasets: [any]\nparams: {norm: Linf, eps: 0.1, steps: 3}\n")
    assert load_threat_card(path).datasets == []
    assert ThreatCard(id="x", family="clean", datasets="any").datasets == []
    path.write_text("id: pgd-anywhere\nfamily: pgd\ndatasets: [any, mnist]\nparams: {norm: Linf, eps: 0.1, steps: 3}\n")
    with pytest.raises(CardError, match="'any' stands alone"):
        load_threat_card(path)


def test_a_default_card_for_any_dataset_is_the_family_default_where_none_names_the_data(tmp_path, monkeypatch):
    (tmp_path / "attacks").mkdir()
    (tmp_path / "attacks" / "pgd-anywhere.yaml").write_text(
        "id: pgd-anywhere\nfamily: pgd\ndefault: true\ndatasets: [any]\nparams: {norm: Linf, eps: 0.1, steps: 3}\n")
    monkeypatch.setenv("BENCH_CARDS", str(tmp_path))
    assert resolve_threat("pgd", dataset="mnist")[0].id == "pgd-linf-0.3"  # a card naming the dataset wins
    assert resolve_threat("pgd", dataset="folder:/x")[0].id == "pgd-anywhere"


def test_a_datasets_any_card_runs_on_a_folder(cli, digits_card, digits_folder, tmp_path):
    path = tmp_path / "pgd-anywhere.yaml"
    path.write_text("id: pgd-anywhere\nfamily: pgd\ndatasets: [any]\nparams: {norm: Linf, eps: 0.1, steps: 3}\n")
    r = cli("run", "--model", digits_card, "--threat", path, "--dataset", digits_folder, "--n", 8,
            "--results", tmp_path / "r", "--json")
    assert r.exit_code == 0, r.output
    assert [run["threat_id"] for run in _runs(tmp_path / "r")] == ["pgd-anywhere"]


# --- the command line and the Python API -----------------------------------------------------------------


def test_run_a_family_at_an_eps_and_norm_on_your_own_folder(cli, digits_card, digits_folder, tmp_path):
    r = cli("run", "--model", digits_card, "--threat", "pgd", "--dataset", digits_folder, "--n", 8,
            "--results", tmp_path / "r")
    assert r.exit_code == 2 and "no default card for dataset folder:" in r.output and "--eps" in r.output
    r = cli("run", "--model", digits_card, "--threat", "pgd", "--eps", "0.1", "--norm", "Linf",
            "--dataset", digits_folder, "--n", 8, "--batch-size", 4, "--results", tmp_path / "r", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["n"] == 8 and 0 <= summary["robust_acc"] <= summary["clean_acc"]
    expected, _ = resolve_threat("pgd", dataset=digits_folder, eps=0.1, norm="Linf")
    [run] = _runs(tmp_path / "r")
    assert run["threat_id"] == "pgd@linf-0.1" and run["dataset"] == digits_folder
    assert run["key"]["protocol"] == run["spec"]["threat"]["hash"] == expected.hash
    assert run["threat_card"]["params"]["eps"] == 0.1 and run["threat_card"]["datasets"] == []
    r = cli("run", "--model", digits_card, "--threat", "pgd", "--eps", "1/10", "--norm", "linf",
            "--dataset", digits_folder, "--n", 8, "--batch-size", 4, "--results", tmp_path / "r", "--json")
    assert r.exit_code == 0, r.output
    assert len(_runs(tmp_path / "r")) == 1  # 1/10 is 0.1: the same protocol, so the same run, resumed


def test_run_refuses_eps_where_it_does_not_apply(cli, digits_card, tmp_path):
    for args, problem in [(("--threat", "clean", "--eps", "0.1"), "threat family clean has no eps"),
                          (("--threat", "pgd", "--eps", "-0.1"), "must not be negative"),
                          (("--threat", "pgd", "--eps", "inf"), "not a finite number"),
                          (("--threat", "pgd", "--eps", "0.1", "--norm", "L1"), "takes --norm Linf or L2")]:
        r = cli("run", "--model", digits_card, *args, "--n", 8, "--results", tmp_path / "r")
        assert r.exit_code == 2 and problem in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "r").exists() or not _runs(tmp_path / "r")


def test_evaluate_tensors_at_an_eps_and_norm(digits_model, tmp_path):
    test = load_dataset("digits", "test")
    summary = bench.evaluate(digits_model, "pgd", x=test.x[:8], y=test.y[:8], eps="8/255", norm="Linf",
                             results=tmp_path / "r", progress=False, batch_size=8)
    assert summary.n == 8
    [run] = _runs(tmp_path / "r")
    assert run["threat_id"] == "pgd@linf-8/255"
    assert run["key"]["protocol"] == resolve_threat("pgd", dataset="tensors", eps=8 / 255, norm="Linf")[0].hash


# --- the listing ------------------------------------------------------------------------------------------


def test_the_listing_shows_what_a_card_accepts_in_words_that_paste_back(cli):
    import csv
    import io

    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(cli("threats", "--format", "csv").stdout))}
    pgd = rows["pgd-linf-0.3"]
    assert pgd["ball"] == "--eps 0.3 --norm Linf" and pgd["datasets"] == "mnist"
    assert yaml.safe_load(pgd["params"]) == load_threat_card("pgd-linf-0.3").params
    assert rows["autoattack-linf-8/255"]["ball"] == "--eps 8/255 --norm Linf"
    assert rows["clean"]["ball"] == "-" and rows["clean"]["datasets"] == "any"
    pasted = ThreatCard(id="x", family="pgd", datasets=[rows["clean"]["datasets"]],
                        params=yaml.safe_load(pgd["params"]))
    assert pasted.datasets == [] and pasted.hash == load_threat_card("pgd-linf-0.3").hash
    records = {r["id"]: r for r in json.loads(cli("threats", "--format", "json").stdout)}
    assert records["pgd-linf-0.3"]["ball"] == "--eps 0.3 --norm Linf"
    table = cli("threats").output
    assert "--eps E [--norm N]" in table and "autoattack (Linf, L2, L1)" in table
