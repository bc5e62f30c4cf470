"""The robust-training recipes: ARMOR_D reduces to its base as the divergence radius vanishes (equal updates on a
fixed batch), the inner maximisation is the suite's PGD, the duals and weights reach the training record, and an
interrupted training resumes to the weights (and duals) of an uninterrupted one."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml

from bench.data import load_dataset
from bench.errors import CardError
from bench.models import load_model_card
from bench.models.archs.small import small_cnn
from bench.recipes.base import RECIPES, Batch
from bench.testing import fit_resumed
from bench.training import train

COMMON = dict(epochs=1, batch_size=48, optimizer="sgd", lr=0.05, schedule="constant", eps=0.15, steps=3,
              step_size=0.06)


def recipe(name: str, **params):
    cls = RECIPES.get(name)
    return cls(cls.Params(**(COMMON | params)))


@pytest.fixture(scope="module")
def batch_data():
    data = load_dataset("digits", "train")
    return data.x[:48], data.y[:48]


def one_step(r, batch_data, model_seed: int = 0):
    """One optimiser step of every parameter group on one fixed batch, from fixed initial weights."""
    torch.manual_seed(model_seed)
    model = small_cnn(input_size=8)
    optimizers = [g.build() for g in r.parameter_groups(model)]
    x, y = batch_data
    loss = r.loss(model, Batch(x, y, torch.arange(len(x)), 0.5, 0, torch.Generator().manual_seed(7)))
    for opt in optimizers:
        opt.zero_grad()
    loss.backward()
    for opt in optimizers:
        opt.step()
    return model, loss.detach()


def same_update(a, b) -> bool:
    return all(torch.allclose(p, q, rtol=1e-5, atol=1e-7) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("base", ["pgd-at", "trades", "mart"])
def test_armor_with_a_vanishing_radius_makes_the_base_method_s_update(base, batch_data):
    reference, base_loss = one_step(recipe(base), batch_data)  # pgd-at is the core recipe
    kl = recipe("armor-kl", base=base, radius=1e-12)
    model, loss = one_step(kl, batch_data)
    assert same_update(model, reference) and float(loss) == pytest.approx(float(base_loss), rel=1e-5)
    assert kl.last.lam > 1e3 and torch.allclose(kl.last.weights, torch.full((48,), 1 / 48), rtol=1e-4)
    # the alpha form at the duals' eps -> 0 optimum: lambda -> infinity, nu = -lambda / (alpha - 1)
    alpha = recipe("armor-alpha", base=base, radius=1e-12, alpha=6.0, lam0=1e8, nu0=-1e8 / 5)
    model, _ = one_step(alpha, batch_data)
    assert same_update(model, reference)
    # not vacuous: a finite radius re-weights, and the update differs
    far = recipe("armor-kl", base=base, radius=0.5, kappa=0.0)
    model, _ = one_step(far, batch_data)
    assert not same_update(model, reference) and float(far.last.weights.max()) > 2 / 48


def test_the_duals_and_weights_of_a_step_are_exposed(batch_data):
    kl = recipe("armor-kl", base="trades", radius=0.05, kappa=0.1)
    one_step(kl, batch_data)
    w = kl.last.weights
    assert kl.last.lam > 0 and bool((w > 0).all()) and float(w.sum()) == pytest.approx(1.0, abs=1e-5)
    alpha = recipe("armor-alpha", base="mart", radius=0.5, alpha=10.0, lam0=1.0, nu0=1.0, dual_lr=0.01)
    one_step(alpha, batch_data)
    w = alpha.last.weights
    assert alpha.last.lam > 0 and alpha.last.nu is not None
    assert bool((w >= 0).all()) and float(w.sum()) == pytest.approx(1.0, abs=1e-5)
    # the duals moved by their own optimiser: Adam's first step is dual_lr against the gradient's sign
    assert float(alpha.nu.detach()) == pytest.approx(1.0, abs=0.011) and float(alpha.nu.detach()) != 1.0
    stats = alpha.epoch_metrics()
    assert {"dual_lambda", "dual_nu", "weight_entropy", "weight_max_n", "weight_kl", "weight_zero"} <= set(stats)
    assert alpha.epoch_metrics() == {}  # each epoch starts afresh


def test_the_inner_maximisation_is_the_suite_s_pgd(batch_data, monkeypatch):
    import bench.recipes.standard as standard

    calls = []
    real = standard.pgd

    def spy(*args, **kwargs):
        calls.append(kwargs["loss"])
        return real(*args, **kwargs)

    monkeypatch.setattr(standard, "pgd", spy)
    for name, params in (("trades", {}), ("mart", {}), ("armor-kl", {"base": "trades", "radius": 0.1}),
                         ("armor-alpha", {"base": "pgd-at", "radius": 0.1, "alpha": 2.0})):
        one_step(recipe(name, **params), batch_data)
    assert calls == ["kl", "ce", "kl", "ce"]


def test_params_take_each_base_s_defaults_and_refuse_what_does_not_fit():
    assert recipe("armor-kl", base="trades", radius=0.1).params.loss == "kl"
    assert recipe("armor-kl", base="mart", radius=0.1).params.beta == 6.0
    assert recipe("armor-kl", base="pgd-at", radius=0.1).params.beta is None
    with pytest.raises(ValueError, match="beta belongs to a TRADES or MART base"):
        recipe("armor-kl", base="pgd-at", radius=0.1, beta=6.0)
    with pytest.raises(ValueError, match="greater than 1"):
        recipe("armor-alpha", base="mart", radius=0.1, alpha=1.0)
    with pytest.raises(ValueError, match="greater than 0"):
        recipe("armor-kl", base="mart", radius=0.0)
    with pytest.raises(ValueError, match="lr_milestones must be increasing"):
        recipe("trades", lr_milestones=[90, 75])
    steps = recipe("mart", epochs=120, lr=0.01, lr_milestones=[75, 90, 100])
    # epochs counted from 1, as the reference code's adjust_learning_rate: the 75th epoch runs at lr / 10
    assert [steps.lr((e - 1) / 120 + 1e-4) for e in (1, 74, 75, 90, 100, 120)] == pytest.approx(
        [0.01, 0.01, 0.001, 0.0001, 0.00001, 0.00001])


def _tiny_card(folder, name: str, params: dict, epochs: int = 2, validation: bool = True):
    recipe_params = {"epochs": epochs, "batch_size": 64, "train_subset": 256, "lr": 0.01, "eps": 0.1, "steps": 2,
                     "step_size": 0.05} | params
    if validation:
        recipe_params["validation"] = {"size": 100, "attack": {"eps": 0.1, "steps": 3, "step_size": 0.04}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"id": name, "dataset": "digits", "architecture": {
        "name": "small-cnn", "kwargs": {"input_size": 8}}, "recipe": {"name": name.split("--")[0], "seed": 0,
                                                                     "params": recipe_params}}))
    return load_model_card(path)


def test_the_training_record_holds_the_duals_and_the_held_out_accuracies(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    card = _tiny_card(tmp_path, "armor-alpha", {"base": "trades", "radius": 0.5, "alpha": 6.0, "nu0": -0.35,
                                                "t": 0.5})
    path = train(card, results=tmp_path / "results")
    history = json.loads(path.with_suffix(".json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2]
    for record in history:
        assert {"train_loss", "clean_acc", "pgd_acc", "dual_lambda", "dual_nu", "weight_entropy", "weight_max_n",
                "weight_kl", "weight_zero", "dual_value", "base_loss"} <= set(record)
        assert record["dual_lambda"] > 0 and record["weight_max_n"] >= 1
    stored = pd.concat(pd.read_parquet(p) for p in (tmp_path / "results" / "training").glob("*.parquet"))
    assert stored.dual_lambda.tolist() == [r["dual_lambda"] for r in history]


@pytest.mark.parametrize("name, params", [
    ("armor-alpha", {"base": "mart", "radius": 0.5, "alpha": 10.0, "nu0": 1.0, "dual_lr": 0.01}),
    ("armor-kl", {"base": "trades", "radius": 0.05, "t": 0.5, "lr_milestones": [2]}),
])
def test_an_interrupted_training_resumes_to_the_uninterrupted_weights(tmp_path, name, params):
    card = _tiny_card(tmp_path, name, params, epochs=3, validation=False)
    data = load_dataset("digits", "train")

    def fresh():
        return type(card.make_recipe())(card.make_recipe().params)

    def run(tag, interrupt_at=None):
        return fit_resumed(lambda: (small_cnn(input_size=8), fresh()), data, tmp_path / f"{tag}.ckpt",
                           interrupt_at=interrupt_at)

    full_model, full, full_history = run("full")
    cut_model, cut, cut_history = run("cut", interrupt_at=0.5)
    for (key, a), b in zip(full_model.state_dict().items(), cut_model.state_dict().values()):
        assert torch.equal(a, b), key
    assert full_history == cut_history and "dual_lambda" in full_history[-1]
    if name == "armor-alpha":
        assert torch.equal(full.raw_lam.detach(), cut.raw_lam.detach()) and torch.equal(full.nu.detach(),
                                                                                          cut.nu.detach())
        assert float(full.nu.detach()) != 1.0  # the duals trained


def test_the_cards_validate_and_pairs_share_their_base_s_budget():
    from bench.cards import catalogue, locate, read_card

    ids = sorted(i for i, path in catalogue("model").cards.items() if "robust-training" in str(path))
    assert len(ids) >= 9 + 12
    armor = ("base", "radius", "kappa", "t", "alpha", "lam0", "nu0", "dual_lr")
    for card_id in ids:
        card = load_model_card(card_id)
        card.make_recipe()  # the params validate
        if card.recipe.name.startswith("armor"):
            params = read_card(locate("model", card_id))["recipe"]["params"]
            base_id = next(i for i in ids if i == card_id.replace(
                f"{card.recipe.name}-", ""))
            base = read_card(locate("model", base_id))
            kept = {k: v for k, v in params.items() if k not in armor}
            assert kept == base["recipe"]["params"], card_id
            assert base["recipe"]["name"] == params["base"]
            assert read_card(locate("model", card_id))["architecture"] == base["architecture"]


def test_bad_recipe_params_are_card_errors(tmp_path):
    card = _tiny_card(tmp_path, "armor-kl--bad", {"base": "pgd-at", "radius": 0.1, "beta": 3.0})
    with pytest.raises(CardError, match="beta belongs to a TRADES or MART base"):
        card.make_recipe()


def test_a_second_training_with_one_recipe_object_starts_from_the_initial_duals(batch_data):
    """A card's recipe object is cached: training it again (e.g. --fresh in one process) must not inherit duals."""
    r = recipe("armor-alpha", base="mart", radius=0.5, alpha=10.0, nu0=1.0, dual_lr=0.01)
    one_step(r, batch_data)
    assert float(r.nu.detach()) != 1.0
    r.parameter_groups(small_cnn(input_size=8))  # what the loop calls when a training starts
    assert float(r.nu.detach()) == 1.0 and float(r.lam.detach()) == pytest.approx(1.0)
