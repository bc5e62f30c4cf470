"""A run knows its code and travels: the spec in run.json rebuilds the run anywhere with the same code, and
build() refuses, naming the difference, where code, numerics, cards, data or weights differ. Another
revision, thread count or batch size is another run, with a note; the board flags a stale run."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

import bench
from bench.errors import BenchError
from bench.leaderboard import build_board
from bench.models import load_model_card
from bench.spec import RunSpec, SpecError, build, plan, spec_of
from bench.store import Store
from bench.threats.pgd import PGD
from conftest import write_threat

KW = dict(n=40, batch_size=20, device="cpu", progress=False)


@pytest.fixture
def pgd_card(tmp_path):
    return write_threat(tmp_path, "pgd", norm="Linf", eps=0.1, steps=3)


def _spec(results, run_id) -> RunSpec:
    return RunSpec.from_dict(Store(results).run_meta(run_id)["spec"])


def test_the_spec_in_run_json_rebuilds_the_same_run(digits_card, pgd_card, tmp_path):
    summary = bench.evaluate(str(digits_card), str(pgd_card), results=tmp_path / "r", **KW)
    spec = _spec(tmp_path / "r", summary.run_id)
    assert spec.run_id == summary.run_id and spec.portable
    assert json.loads(json.dumps(spec.to_dict())) == spec.to_dict()  # plain JSON, as workers receive it
    ev = build(RunSpec.from_dict(spec.to_dict()))
    assert ev.run_id == summary.run_id and len(ev.positions) == 40
    assert spec.implementation["family"] == {"name": "pgd", "revision": PGD.revision}
    assert spec.numerics["threads"] == torch.get_num_threads() and spec.numerics["torch"] == torch.__version__


def test_build_refuses_other_code_naming_the_family_revision(digits_card, pgd_card, tmp_path, monkeypatch):
    summary = bench.evaluate(str(digits_card), str(pgd_card), results=tmp_path, **KW)
    spec = _spec(tmp_path, summary.run_id)
    monkeypatch.setattr(PGD, "revision", PGD.revision + 1)
    with pytest.raises(SpecError) as err:
        build(spec)
    assert "code (implementation identity)" in err.value.problem
    assert f"family.revision: {PGD.revision - 1} in the run, {PGD.revision} here" in err.value.problem


def test_build_refuses_other_numerics_a_changed_card_and_other_weights(digits_card, pgd_card, tmp_path):
    summary = bench.evaluate(str(digits_card), str(pgd_card), results=tmp_path / "r", **KW)
    spec = _spec(tmp_path / "r", summary.run_id).to_dict()
    with pytest.raises(SpecError, match="numerics differ from the run's: torch: 1.0 in the run"):
        build(RunSpec.from_dict({**spec, "numerics": {**spec["numerics"], "torch": "1.0"}}))
    other = dict(spec["threat"], card={**spec["threat"]["card"], "params": {"norm": "Linf", "eps": 0.2, "steps": 3}})
    with pytest.raises(SpecError, match="threat card test-pgd hashes to"):
        build(RunSpec.from_dict({**spec, "threat": other}))
    with pytest.raises(SpecError, match="trained weights differ"):
        build(RunSpec.from_dict({**spec, "weights": {"digits-cnn@0123": "f" * 64}}))
    with pytest.raises(SpecError, match="not a run spec"):
        RunSpec.from_dict({"model": {}})


def test_a_bare_module_or_tensors_stay_in_their_process(digits_model, pgd_card, tmp_path):
    summary = bench.evaluate(digits_model, str(pgd_card), dataset="digits", results=tmp_path, **KW)
    spec = _spec(tmp_path, summary.run_id)
    assert not spec.portable
    with pytest.raises(SpecError, match="bare module"):
        build(spec)
    with pytest.raises(BenchError, match="processes executor runs a model card"):
        bench.evaluate(digits_model, str(pgd_card), dataset="digits", results=tmp_path, executor="processes", **KW)


def test_planning_trains_nothing_and_the_driver_trains_once(tmp_path, pgd_card, monkeypatch):
    import bench.training

    card = tmp_path / "trainable.yaml"
    card.write_text(yaml.safe_dump({"id": "trainable", "dataset": "digits",
                                    "architecture": {"name": "small-cnn", "kwargs": {"input_size": 8}},
                                    "recipe": {"name": "standard", "seed": 0, "params": {"epochs": 1}}}))
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    trained = []
    real = bench.training._fit
    monkeypatch.setattr(bench.training, "_fit", lambda *a, **k: trained.append(1) or real(*a, **k))
    p = plan(str(card), str(pgd_card), n=20, device="cpu")
    assert trained == [] and not (tmp_path / "cache" / "models").exists()
    with pytest.raises(BenchError, match="no trained weights yet"):
        spec_of(p)  # the spec holds the weights' sha256: it needs the training step first
    for _ in range(2):
        bench.evaluate(str(card), str(pgd_card), results=tmp_path / "r", **KW)
    assert trained == [1]
    assert list(_spec(tmp_path / "r", Store(tmp_path / "r").run_ids()[0]).weights) == [
        f"trainable@{load_model_card(card).training_hash[:16]}"]


def test_other_threads_are_another_run_with_a_note(digits_card, pgd_card, tmp_path):
    one = bench.evaluate(str(digits_card), str(pgd_card), results=tmp_path, threads=1, **KW)
    two = bench.evaluate(str(digits_card), str(pgd_card), results=tmp_path, threads=2, **KW)
    assert one.run_id != two.run_id
    assert any("--threads 1 there, 2 here" in note and "separate run" in note for note in two.notes)


def test_a_bumped_revision_makes_the_old_run_stale_and_recomputes(digits_card, pgd_card, tmp_path, monkeypatch):
    old = bench.evaluate(str(digits_card), str(pgd_card), results=tmp_path, **KW)
    monkeypatch.setattr(PGD, "revision", PGD.revision + 1)
    board = build_board(Store(tmp_path))
    assert "stale: made by other code (family.revision" in board.blocks[0].rows[0]["flag"]
    new = bench.evaluate(str(digits_card), str(pgd_card), results=tmp_path, **KW)
    assert new.run_id != old.run_id and new.seconds > 0  # computed again, not reused
    assert any(old.run_id in note and "stale (made by other code)" in note for note in new.notes)
    rows = build_board(Store(tmp_path)).blocks[0].rows
    assert [(r["run_id"], r["flag"]) for r in rows] == [(new.run_id, "")]  # the current run replaces it


def test_the_board_says_when_compared_runs_differ_in_numerics(digits_card, digits_model, pgd_card, tmp_path):
    bench.evaluate(str(digits_card), str(pgd_card), results=tmp_path, threads=1, **KW)
    bench.evaluate(digits_model, str(pgd_card), dataset="digits", model_name="bare", results=tmp_path, threads=2,
                   **KW)
    notes = build_board(Store(tmp_path)).blocks[0].notes
    assert len(notes) == 1 and "different numerics" in notes[0] and "threads 1 (digits-cnn)" in notes[0] \
        and "threads 2 (bare)" in notes[0]


def test_a_copied_results_folder_rebuilds_its_runs(digits_card, pgd_card, tmp_path):
    summary = bench.evaluate(str(digits_card), str(pgd_card), results=tmp_path / "a", **KW)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    again = bench.evaluate(str(digits_card), str(pgd_card), results=tmp_path / "b", **KW)
    assert again.run_id == summary.run_id and again.robust_acc == summary.robust_acc
