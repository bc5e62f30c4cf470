"""The convergence check: the survivors attacked again with twice the budget, the drop of robust accuracy with its
interval and verdict, stored beside the run and shown on the board."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bench.cli import app
from bench.convergence import TOLERANCE, drop_interval, verdict
from bench.store import Store

MODELS = Path(__file__).parent / "fingerprints" / "models"
MODEL = str(MODELS / "digits-cnn.yaml")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_the_drop_is_exact_when_every_survivor_is_checked_and_an_interval_otherwise():
    assert drop_interval(3, 40, 40, 100) == (0.03, 0.03, 0.03)
    drop, low, high = drop_interval(3, 20, 40, 100)
    assert drop == pytest.approx(0.06) and 0 < low < drop < high < 0.4
    assert drop_interval(0, 20, 40, 100)[1] == 0
    assert verdict(0.0, TOLERANCE) == "converged"
    assert verdict(0.02, 0.03) == "not converged"
    assert verdict(0.0, 0.05) == "not resolved"


def test_check_convergence_reruns_the_survivors_with_twice_the_budget(tmp_path):
    card = tmp_path / "weak.yaml"
    card.write_text(yaml.safe_dump({"id": "weak-pgd", "family": "pgd", "params": {
        "norm": "Linf", "eps": 0.1, "steps": 2, "step_size": 0.02, "restarts": 1}}))
    common = ("--model", MODEL, "--threat", card, "--n", 60, "--device", "cpu", "--threads", 1,
              "--results", tmp_path / "r")
    r = invoke("run", *common, "--check-convergence", "--convergence-points", 10, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{"):])
    checked = out["convergence"]
    survivors = round(out["robust_acc"] * 60)
    assert checked["doubled"] == {"restarts": 2} and checked["survivors"] == survivors
    assert checked["checked"] == min(10, survivors) > 0
    store = Store(tmp_path / "r")
    again = store.read_run(checked["doubled_run"]).rows
    assert len(again) == checked["checked"] and checked["broken"] == int((~again["robust"]).sum())
    assert checked["low"] <= checked["drop"] <= checked["high"]
    assert json.loads((store.run_dir(out["run_id"]) / "convergence.json").read_text()) == checked
    board = invoke("board", "--results", tmp_path / "r", "--format", "json")
    rows = {row["run_id"]: row for row in json.loads(board.output)}
    assert rows[out["run_id"]]["convergence"] == checked["verdict"]
    markdown = invoke("board", "--results", tmp_path / "r").output
    assert "twice the budget" in markdown and checked["verdict"] in markdown


def test_a_threat_without_a_budget_says_so(tmp_path):
    r = invoke("run", "--model", MODEL, "--threat", "clean", "--n", 20, "--device", "cpu", "--results", tmp_path,
               "--check-convergence")
    assert r.exit_code != 0 and "has no budget to double" in r.output and "Traceback" not in r.output
