"""RobustBench both ways: model_info files (in its documented format: percent strings, eps strings, external,
unreliable, corruptions fields) become imported entries, and our entries become model_info files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import bench
from bench.cli import app
from bench.leaderboard.entries import read_entry

COMMITTED = Path(bench.__file__).resolve().parent.parent / "leaderboard"
CARMON = {"link": "https://arxiv.org/abs/1905.13736", "name": "Unlabeled Data Improves Adversarial Robustness",
          "authors": "Yair Carmon, Aditi Raghunathan, Ludwig Schmidt, Percy Liang, John C. Duchi",
          "additional_data": True, "number_forward_passes": 1, "dataset": "cifar10", "venue": "NeurIPS 2019",
          "architecture": "WideResNet-28-10", "eps": "8/255", "clean_acc": "89.69", "reported": "62.5",
          "autoattack_acc": "59.53", "unreliable": False, "footnote": ""}
EXTERNAL = {**CARMON, "name": "Some Defence", "clean_acc": "90.1", "autoattack_acc": "60.2", "external": "55.3",
            "unreliable": True}
CORRUPT = {"link": "https://arxiv.org/abs/1912.02781", "name": "AugMix", "authors": "Hendrycks et al.",
           "additional_data": False, "number_forward_passes": 1, "dataset": "cifar10", "venue": "ICLR 2020",
           "architecture": "ResNeXt29_32x4d", "eps": None, "clean_acc": "95.83", "reported": "89.09",
           "corruptions_acc": "89.09"}


def _model_info(root: Path) -> Path:
    for relative, record in {"cifar10/Linf/Carmon2019Unlabeled.json": CARMON,
                             "cifar10/Linf/Some2024Defence.json": EXTERNAL,
                             "cifar10/corruptions/Hendrycks2020AugMix_ResNeXt.json": CORRUPT}.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(json.dumps(record))
    (root / "cifar10" / "Linf" / "Broken2024.json").write_text('{"clean_acc": "ninety"}')
    return root


def test_model_info_files_become_imported_entries(tmp_path):
    out = tmp_path / "leaderboard"
    done = CliRunner().invoke(app, ["leaderboard", "import-robustbench", str(_model_info(tmp_path / "mi")),
                                    "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert "3 entries imported" in done.output and "Broken2024.json: clean_acc is 'ninety'" in done.output
    entries = {e.model.id: e for e in map(read_entry, out.glob("entries/*/*.json"))}
    carmon = entries["Carmon2019Unlabeled"]
    assert carmon.provenance == "imported" and carmon.n is None and carmon.points is None
    assert carmon.metrics["clean_acc"].value == pytest.approx(0.8969)
    assert carmon.metrics["robust_acc"].value == pytest.approx(0.5953) and carmon.headline == "robust_acc"
    assert carmon.protocol.card["params"] == {"norm": "Linf", "eps": pytest.approx(8 / 255), "version": "standard"}
    assert carmon.source["reported"] == "62.5" and carmon.dataset.identity is None  # kept, never guessed
    external = entries["Some2024Defence"]
    assert external.headline == "robust_acc_external" and external.metrics["robust_acc_external"].value == 0.553
    assert external.source["unreliable"] is True
    augmix = entries["Hendrycks2020AugMix_ResNeXt"]
    assert augmix.protocol.family == "corruptions" and augmix.metrics["corruption_acc"].value == pytest.approx(0.8909)


def test_a_verified_entry_needs_what_makes_it_recomputable(tmp_path):
    path = next(COMMITTED.glob("entries/mnist/*.json"))
    record = json.loads(path.read_text())
    record["n"] = None
    (tmp_path / "e.json").write_text(json.dumps(record))
    with pytest.raises(bench.errors.BenchError, match="not a valid entry"):
        read_entry(tmp_path / "e.json")


def test_our_entries_become_model_info_files(tmp_path):
    done = CliRunner().invoke(app, ["leaderboard", "export-robustbench", "--entries", str(COMMITTED),
                                    "--out", str(tmp_path / "mi")])
    assert done.exit_code == 0, done.output
    assert "RobustBench has no threat model for clean" in done.output  # clean has no model_info file
    linf = json.loads((tmp_path / "mi" / "mnist" / "Linf" / "mnist-cnn-pgd-at.json").read_text())
    (entry,) = [e for e in map(read_entry, COMMITTED.glob("entries/mnist/mnist-cnn-pgd-at--*.json"))
                if e.protocol.id == "autoattack-linf-0.3"]
    assert linf["eps"] == "3/10" and linf["autoattack_acc"] == f"{100 * entry.metrics['robust_acc'].value:.2f}"
    assert linf["clean_acc"] == f"{100 * entry.metrics['clean_acc'].value:.2f}" and "n 500" in linf["footnote"]
    assert (tmp_path / "mi" / "mnist" / "corruptions" / "mnist-cnn-pgd-at.json").is_file()
    again = CliRunner().invoke(app, ["leaderboard", "import-robustbench", str(tmp_path / "mi"),
                                     "--out", str(tmp_path / "back")])  # and back: the numbers survive
    assert again.exit_code == 0, again.output
    back = {(e.model.id, e.protocol.family): e for e in map(read_entry, (tmp_path / "back").glob("entries/*/*.json"))}
    assert back[("mnist-cnn-pgd-at", "autoattack")].metrics["robust_acc"].value == pytest.approx(
        entry.metrics["robust_acc"].value)
