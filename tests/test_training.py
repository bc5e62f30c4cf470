"""What robust-training recipes need from the loop: extra trainable parameters and state (saved and
restored on resume), pluggable attack losses, and per-epoch validation with best-checkpoint selection."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from pydantic import Field
from torch import nn

from bench.data import load_dataset, subset_indices
from bench.errors import CardError
from bench.models import load_model_card, trained_path
from bench.models.archs.small import small_cnn
from bench.ops.losses import LOSSES
from bench.ops.pgd import pgd
from bench.store import Store
from bench.testing import fit_resumed
from bench.training import train
from bench.recipes.base import ParamGroup, Recipe, RecipeParams
from conftest import threat


class DualParams(RecipeParams):
    dual_lr: float = Field(0.05, gt=0)


class DualRecipe(Recipe):
    """Cross-entropy plus a penalty on a dual variable with its own optimiser and learning rate, and a
    step counter kept as recipe state (the shape of ARMOR_D's dual variables)."""

    Params = DualParams

    def __init__(self, params):
        super().__init__(params)
        self.lam = nn.Parameter(torch.zeros(()))
        self.steps = 0

    def parameter_groups(self, model):
        return super().parameter_groups(model) + [ParamGroup("dual", [self.lam], "adam", self.params.dual_lr,
                                                             scheduled=False)]

    def state_dict(self):
        return {"lam": self.lam.detach().clone(), "steps": torch.tensor(self.steps)}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.lam.copy_(state["lam"])
        self.steps = int(state["steps"])

    def loss(self, model, batch):
        self.steps += 1
        return F.cross_entropy(model(batch.x), batch.y) + (self.lam - 1.0) ** 2 * (1 + batch.progress)


def _fit(tmp_path, name, interrupt_at=None):
    def make():
        return small_cnn(input_size=8), DualRecipe(DualParams(epochs=3, batch_size=128, lr=0.01))

    model, recipe, _ = fit_resumed(make, load_dataset("digits", "train"), tmp_path / f"{name}.ckpt",
                                   interrupt_at=interrupt_at)
    return model, recipe


def test_extra_parameters_train_with_their_own_optimiser_and_resume_exactly(tmp_path):
    full_model, full = _fit(tmp_path, "full")
    assert 0.3 < full.lam.detach().item() < 1.5 and full.steps == 3 * 11  # lam moved towards 1 (Adam, lr 0.05)
    resumed_model, resumed = _fit(tmp_path, "cut", interrupt_at=0.5)
    state = torch.load(tmp_path / "cut.ckpt", weights_only=True)
    assert set(state["optimizers"]) == {"model", "dual"} and state["epoch"] == 3
    assert torch.equal(resumed.lam.detach(), full.lam.detach()) and resumed.steps == full.steps
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name


def test_attack_losses_have_their_defining_properties(digits_model):
    test = load_dataset("digits", "test")
    x, y = test.x[:64], test.y[:64]
    with torch.no_grad():
        logits = digits_model(x)
    assert torch.allclose(LOSSES.get("kl")(logits, y, logits), torch.zeros(64), atol=1e-6)
    margin = LOSSES.get("margin")(logits, y, None)
    assert torch.equal(margin > 0, logits.argmax(1) != y)
    assert torch.allclose(LOSSES.get("ce")(logits, y, None), F.cross_entropy(logits, y, reduction="none"))
    for loss in ("ce", "kl", "margin"):
        x_adv = pgd(digits_model, x, y, norm="Linf", eps=0.2, steps=20, step_size=0.05,
                    gen=torch.Generator().manual_seed(0), loss=loss)
        assert (x_adv - x).abs().max() <= 0.2 + 1e-6
        with torch.no_grad():
            assert (digits_model(x_adv).argmax(1) == y).float().mean() < 0.2, loss


def test_the_pgd_threat_and_recipe_take_a_loss(digits_model, tmp_path):
    from bench.run import evaluate

    s = evaluate(digits_model, threat("pgd", norm="Linf", eps=0.1, steps=10, loss="margin"), dataset="digits",
                 n=100, results=tmp_path, progress=False)
    assert s.robust_acc < s.clean_acc - 0.2
    with pytest.raises(CardError, match="unknown attack loss 'hinge'"):
        evaluate(digits_model, threat("pgd", norm="Linf", eps=0.1, steps=10, loss="hinge"), dataset="digits", n=10,
                 results=tmp_path, progress=False)


def validated_card(folder, select="pgd_acc", epochs=4):
    path = folder / "validated.yaml"
    path.write_text(yaml.safe_dump({
        "id": "validated", "dataset": "digits", "architecture": {"name": "small-cnn", "kwargs": {"input_size": 8}},
        "recipe": {"name": "pgd-at", "seed": 0, "params": {
            "epochs": epochs, "batch_size": 64, "lr": 0.01, "eps": 0.1, "steps": 3, "step_size": 0.04, "loss": "kl",
            "validation": {"size": 200, "select": select,
                           "attack": {"eps": 0.1, "steps": 5, "step_size": 0.03}}}}}))
    return load_model_card(path)


def test_validation_keeps_the_best_epoch_and_stores_the_history(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    card = validated_card(tmp_path)
    path = train(card, results=tmp_path / "results")
    history = json.loads(path.with_suffix(".json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert all({"train_loss", "clean_acc", "pgd_acc", "selected"} <= set(r) for r in history)
    best = max(history, key=lambda r: r["pgd_acc"])
    assert [r["selected"] for r in history].count(1.0) == 1 and best["selected"] == 1.0
    stored = pd.concat(pd.read_parquet(p) for p in (tmp_path / "results" / "training").glob("*.parquet"))
    assert stored.epoch.tolist() == [1, 2, 3, 4] and stored.pgd_acc.tolist() == [r["pgd_acc"] for r in history]
    # the saved weights are the selected epoch's: their held-out clean accuracy is that epoch's
    from bench.models import from_file

    model = from_file(card, trained_path(card))
    data = load_dataset("digits", "train")
    held_out = subset_indices(len(data), None)[:200]
    with torch.no_grad():
        clean = (model(data.x[held_out]).argmax(1) == data.y[held_out]).float().mean().item()
    assert clean == pytest.approx(best["clean_acc"])
    recipe = card.make_recipe()
    assert not set(recipe.positions(len(data)).tolist()) & set(held_out.tolist())  # never trained on


def test_a_selection_metric_needs_what_it_selects_on(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"id": "bad", "dataset": "digits", "architecture": {"name": "small-cnn"},
                                    "recipe": {"name": "standard", "params": {
                                        "epochs": 1, "validation": {"select": "pgd_acc"}}}}))
    with pytest.raises(CardError, match="select: pgd_acc needs an attack"):
        load_model_card(path).make_recipe()
    assert Store(tmp_path).root == tmp_path


def test_a_model_trained_on_first_use_inside_no_grad_still_trains(tmp_path, monkeypatch):
    import bench

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    card = tmp_path / "tiny.yaml"
    card.write_text(yaml.safe_dump({"id": "tiny", "dataset": "digits", "architecture": {
        "name": "small-cnn", "kwargs": {"input_size": 8}}, "recipe": {"name": "standard", "params": {
            "epochs": 2, "batch_size": 64}}}))
    with torch.no_grad():
        model = bench.load_model(str(card))
    test = load_dataset("digits", "test")
    with torch.no_grad():
        assert float((model(test.x).argmax(1) == test.y).float().mean()) > 0.5


def _tiny_card(folder, training_time=None):
    data = {"id": "tiny-prebuilt", "dataset": "digits", "architecture": {"name": "small-cnn", "kwargs": {
        "input_size": 8}}, "recipe": {"name": "standard", "params": {"epochs": 1, "batch_size": 64}}}
    path = folder / "tiny-prebuilt.yaml"
    path.write_text(yaml.safe_dump(data | ({"training_time": training_time} if training_time else {})))
    return load_model_card(path)


def _ship(tmp_path, monkeypatch, card):
    """Train the card in one cache, then lay its weights and record out as the suite ships them."""
    import shutil

    import bench.models.prebuilt as prebuilt

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "builder"))
    trained = train(card)
    shipped = tmp_path / "prebuilt"
    shipped.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copyfile(trained.with_suffix(suffix), shipped / trained.with_suffix(suffix).name)
    monkeypatch.setattr(prebuilt, "prebuilt_dir", lambda: shipped)
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "user"))
    return shipped / trained.name


def test_shipped_weights_are_installed_instead_of_training(tmp_path, monkeypatch):
    import bench.training as training
    from bench.models.weights import sha256_file

    card = _tiny_card(tmp_path)
    shipped = _ship(tmp_path, monkeypatch, card)
    assert not trained_path(card).is_file() and training.training_plan([card]) == []
    monkeypatch.setattr(training, "_fit", lambda *a, **k: pytest.fail("trained although weights are shipped"))
    training.ensure_trained(card)
    assert sha256_file(trained_path(card)) == sha256_file(shipped)
    assert json.loads(trained_path(card).with_suffix(".json").read_text())["prebuilt"] == shipped.name


def test_damaged_shipped_weights_are_refused_not_used(tmp_path, monkeypatch):
    from bench.errors import WeightsError
    from bench.training import ensure_trained

    card = _tiny_card(tmp_path)
    shipped = _ship(tmp_path, monkeypatch, card)
    data = bytearray(shipped.read_bytes())
    data[-1] ^= 1
    shipped.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="do not match the sha256"):
        ensure_trained(card)
    assert not trained_path(card).is_file()


def test_a_run_says_what_it_would_train_and_no_train_refuses(tmp_path, monkeypatch, capsys):
    import bench
    from bench.training import TrainingNeeded

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "empty"))
    card = _tiny_card(tmp_path, training_time="about 2 s on 2 CPU cores")
    with pytest.raises(TrainingNeeded, match=r"tiny-prebuilt \(recipe standard, about 2 s on 2 CPU cores\)"):
        bench.evaluate(card, "clean", n=8, train=False)
    assert not trained_path(card).is_file()
    asked = []
    with pytest.raises(TrainingNeeded, match="bench train tiny-prebuilt"):
        bench.evaluate(card, "clean", n=8, train=lambda cards: asked.append([c.id for c in cards]) or False)
    assert asked == [["tiny-prebuilt"]]
    summary = bench.evaluate(card, "clean", n=8, progress=True)
    assert summary.complete and trained_path(card).is_file()
    assert "training first (not in the cache, none shipped): tiny-prebuilt" in capsys.readouterr().err


def test_the_cli_no_train_flag_fails_fast_naming_the_command(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from bench.cli import app

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "empty"))
    card = _tiny_card(tmp_path)
    out = CliRunner().invoke(app, ["run", "--model", str(card.source_dir) + "/tiny-prebuilt.yaml", "--threat",
                                   "clean", "--n", "8", "--no-train"])
    assert out.exit_code == 2 and "`bench train tiny-prebuilt`" in out.output
    assert not trained_path(card).is_file()


def test_bench_train_retrains_a_prebuilt_card_and_compares_with_the_shipped_weights(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from bench.cli import app

    card = _tiny_card(tmp_path)
    _ship(tmp_path, monkeypatch, card)
    out = CliRunner().invoke(app, ["train", str(tmp_path / "tiny-prebuilt.yaml"), "--device", "cpu"])
    assert out.exit_code == 0, out.output
    lines = {line.split()[0]: line for line in out.output.splitlines() if line.split()}
    assert "trained" in lines and "shipped" in lines and "clean_acc" in lines["shipped"]


def test_every_shipped_weight_file_still_belongs_to_its_card():
    """The prebuilt weights are found by their card's training hash: a card edited after its weights were shipped
    leaves them unusable (a run trains instead, while listings still say prebuilt), and so would a change to what
    the hash covers that is not a change of training (revisions at 0 are left out of it)."""
    from bench.cards import builtin_root
    from bench.models.card import as_card

    records = {path.name: json.loads(path.read_text())
               for path in sorted((builtin_root() / "models" / "prebuilt").glob("*.json"))}
    assert records
    stale = [name for name, data in records.items() if as_card(data["card"]).training_hash != data["training_hash"]
             or not name.endswith(f"-{data['training_hash'][:16]}.json")]
    assert not stale, (f"shipped weights no run can use (their card's training hash moved on): {stale}; retrain "
                       "them with `bench train CARD` and ship what it writes in place of the old pair")

