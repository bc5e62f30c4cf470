"""`bench check`, the CI gate: a weakened copy of a shipped model fails, the same model passes, an improvement
passes, and runs that ask another question are not compared."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from scipy.stats import binomtest
from typer.testing import CliRunner

import bench
from bench.check import check, compare_rows
from bench.cli import app
from bench.metrics import Metric
from bench.models.weights import sha256_file

SHIPPED = Path(bench.__file__).resolve().parent.parent / "models" / "mnist-cnn-pgd-at.yaml"
PGD = {"id": "check-pgd", "family": "pgd", "params": {"norm": "Linf", "eps": 0.3, "steps": 5}}
N = 200


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A results folder with the shipped PGD-trained CNN's run (the baseline), a threat card, and a card of a
    weakened copy (its weights perturbed)."""
    out = tmp_path_factory.mktemp("check")
    (out / "pgd.yaml").write_text(yaml.safe_dump(PGD))
    state = load_file(str(SHIPPED.parent / "weights" / "mnist-cnn-pgd-at.safetensors"))
    gen = torch.Generator().manual_seed(0)
    weak = {k: v + 0.5 * v.std() * torch.randn(v.shape, generator=gen) if v.is_floating_point() and v.numel() > 1
            else v for k, v in state.items()}
    save_file(weak, str(out / "weak.safetensors"))
    card = yaml.safe_load(SHIPPED.read_text())
    card.update(id="mnist-cnn-pgd-at-weakened", include=str(SHIPPED.parent / "_mnist-small-cnn.yaml"),
                weights={"file": "weak.safetensors", "sha256": sha256_file(out / "weak.safetensors")})
    card.pop("recipe")
    (out / "weak.yaml").write_text(yaml.safe_dump(card))
    return out


def _run(folder: Path, model: str) -> str:
    summary = bench.evaluate(model, folder / "pgd.yaml", n=N, batch_size=100, results=folder / "results",
                             progress=False)
    return summary.run_id


def _check(folder: Path, *args: str):
    return CliRunner().invoke(app, ["check", "--results", str(folder / "results"), *args])


def test_a_weakened_copy_fails_the_same_model_passes_and_an_improvement_passes(folder):
    shipped, weak = _run(folder, str(SHIPPED)), _run(folder, str(folder / "weak.yaml"))

    failed = _check(folder, "--model", str(folder / "weak.yaml"), "--baseline", shipped,
                    "--junit", str(folder / "junit.xml"))
    assert failed.exit_code == 1, failed.output
    line = next(ln for ln in failed.output.splitlines() if "robust accuracy" in ln)
    assert "REGRESSED" in line and "[headline]" in line
    assert float(re.search(r"p = ([0-9.e-]+)", line)[1]) < 1e-6
    suite = ET.parse(folder / "junit.xml").getroot()
    assert suite.get("failures") == "1" and suite.find("testcase/failure") is not None

    same = _check(folder, "--model", str(SHIPPED), "--baseline", shipped, "--json")
    assert same.exit_code == 0, same.output
    (result,) = json.loads(same.output)
    assert result["passed"] and result["run_id"] == shipped  # the same run: nothing recomputed
    assert all(c["worse"] == c["better"] == 0 and c["p_worse"] == 1 for c in result["comparisons"])

    improved = _check(folder, "--model", str(SHIPPED), "--baseline", str(folder / "results" / "runs" / weak))
    assert improved.exit_code == 0 and "improved" in improved.output, improved.output


def test_runs_that_ask_another_question_are_not_compared(folder, monkeypatch):
    shipped = _run(folder, str(SHIPPED))
    other = _check(folder, "--model", str(SHIPPED), "--baseline", shipped, "--threat", "pgd-linf-0.3")
    assert other.exit_code == 2 and "another protocol" in other.output

    missing = _check(folder, "--model", str(SHIPPED), "--baseline", "no-such-run")
    assert missing.exit_code == 2 and "nor a run id" in missing.output

    from bench.threats.pgd import PGD as PGDThreat

    monkeypatch.setattr(PGDThreat, "revision", PGDThreat.revision + 1)  # the current code is another revision
    result = check(str(SHIPPED), shipped, results=folder / "results", progress=False)
    assert result.exit_code == 2 and any("bench.threats.pgd" in r or "family.revision" in r for r in result.reasons)


def test_the_pytest_plugin_gates_a_test_suite(folder, tmp_path):
    shipped = _run(folder, str(SHIPPED))
    (tmp_path / "test_gate.py").write_text(
        "def test_shipped(bench_check):\n"
        f"    assert bench_check({str(SHIPPED)!r}).passed\n\n"
        "def test_weakened(bench_check):\n"
        f"    assert bench_check({str(folder / 'weak.yaml')!r}).passed\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path),
                          "--bench-baseline", shipped], capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "BENCH_RESULTS": str(folder / "results")})
    assert "1 failed, 1 passed" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    assert "REGRESSED" in out.stdout


def test_a_committed_leaderboard_entry_is_a_baseline(folder):
    entries = SHIPPED.parent.parent / "leaderboard" / "entries" / "mnist"
    (entry,) = entries.glob("mnist-cnn-pgd-at--*--45a0af57e073.json")
    same = check(str(SHIPPED), entry, results=folder / "results", progress=False)  # the entry's clean protocol
    assert same.passed and [c.metric for c in same.comparisons] == ["clean_acc"], str(same)
    assert same.comparisons[0].worse == same.comparisons[0].better == 0  # the entry's points, recomputed

    state = load_file(str(folder / "weak.safetensors"))
    gen = torch.Generator().manual_seed(1)
    save_file({k: v + 2 * v.std() * torch.randn(v.shape, generator=gen) if v.is_floating_point() and v.numel() > 1
               else v for k, v in state.items()}, str(folder / "broken.safetensors"))
    card = yaml.safe_load((folder / "weak.yaml").read_text())
    card.update(id="broken", weights={"file": "broken.safetensors",
                                      "sha256": sha256_file(folder / "broken.safetensors")})
    (folder / "broken.yaml").write_text(yaml.safe_dump(card))
    broken = check(str(folder / "broken.yaml"), entry, results=folder / "results", progress=False)
    assert broken.exit_code == 1 and broken.comparisons[0].regressed, str(broken)


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_rates_are_compared_with_mcnemars_exact_test_in_the_metrics_direction(higher_is_better):
    metric = Metric("acc", "ok", "accuracy", agg="rate", higher_is_better=higher_is_better)
    base = np.array([True] * 60 + [False] * 40)
    new = base.copy()
    new[:12] = False  # 12 points lost, 3 gained
    new[60:63] = True
    c = compare_rows(metric, base, new, headline=True, alpha=0.05, tolerance=None)
    lost, gained = (12, 3) if higher_is_better else (3, 12)
    assert (c.worse, c.better) == (lost, gained)
    assert c.p_worse == pytest.approx(binomtest(lost, 15, 0.5, alternative="greater").pvalue)
    assert c.regressed == higher_is_better and c.improved == (not higher_is_better)
    assert c.change == pytest.approx(-9.0) and c.tolerance == pytest.approx(1.0)
    assert not compare_rows(metric, base, new, headline=True, alpha=0.05, tolerance=10).regressed  # within it


def test_means_are_compared_with_a_paired_test():
    metric = Metric("drop", "drop", "ELBO drop", agg="mean", higher_is_better=False)
    rng = np.random.default_rng(0)
    base = rng.normal(5, 1, 300)
    worse = compare_rows(metric, base, base + rng.normal(0.3, 0.2, 300), headline=True, alpha=0.05, tolerance=None)
    assert worse.regressed and worse.p_worse < 1e-6
    noise = compare_rows(metric, base, base + rng.normal(0, 0.2, 300), headline=True, alpha=0.01, tolerance=0.1)
    assert not noise.regressed and not noise.improved
