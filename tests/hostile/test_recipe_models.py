"""Trust under hostile input for the training recipes: every robust-training recipe has a cheap card in the
catalogue, its trained model goes through the hostile models like any other card (a clear error, never a number),
and a recipe card with impossible params, or with a recipe or an architecture of another task, is refused by
`bench train` with the field named, never a traceback."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from catalogue import HOSTILE_MODELS, RECIPE_CARDS, NaNOffTheGrid
from typer.testing import CliRunner

import bench
from bench.cli import app
from bench.errors import BenchError
from bench.registry import families
from bench.testing import threat_card

TINY = {"dataset": "digits", "architecture": {"name": "small-cnn", "kwargs": {"input_size": 8}}}
BUDGET = {"epochs": 1, "batch_size": 64, "train_subset": 128}
ATTACKS = {"pgd": threat_card("pgd", norm="Linf", eps=0.1, steps=3),
           "autoattack": threat_card("autoattack", norm="Linf", eps=0.1, version="custom", attacks=["apgd-ce"])}


def _card(folder: Path, recipe: str, params: dict) -> Path:
    path = folder / f"hostile-{recipe}.yaml"
    path.write_text(yaml.safe_dump({"id": f"hostile-{recipe}", **TINY,
                                    "recipe": {"name": recipe, "seed": 0, "params": BUDGET | params}}))
    return path


@pytest.fixture(autouse=True)
def shared_cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "hostile-recipes-cache"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, object]:
    """Each catalogue recipe's tiny card, trained once, and its model."""
    folder = tmp_path_factory.mktemp("recipes")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "hostile-recipes-cache"))
        return {name: bench.load_model(str(_card(folder, name, params))) for name, params in RECIPE_CARDS.items()}


def test_every_robust_training_recipe_is_in_the_catalogue():
    provided = next(f for f in families() if f.name == "robust_training").provides["recipe"]
    assert set(provided) <= set(RECIPE_CARDS), "add a cheap card for the new recipe to RECIPE_CARDS"


@pytest.mark.parametrize("recipe", sorted(RECIPE_CARDS))
@pytest.mark.parametrize("model", sorted(HOSTILE_MODELS))
def test_every_recipe_s_model_wrapped_hostile_is_refused(trained, tmp_path, recipe, model):
    factory, message = HOSTILE_MODELS[model]
    with pytest.raises(BenchError, match=message):
        bench.evaluate(factory(trained[recipe]), ATTACKS["pgd"], dataset="digits", n=20, results=tmp_path,
                       progress=False)


@pytest.mark.parametrize("recipe", sorted(RECIPE_CARDS))
def test_every_recipe_s_model_is_attacked_honestly(trained, tmp_path, recipe):
    with pytest.raises(BenchError, match="non-finite"):
        bench.evaluate(NaNOffTheGrid(trained[recipe]), ATTACKS["pgd"], dataset="digits", n=20, results=tmp_path,
                       progress=False)
    for attack in ATTACKS.values():
        s = bench.evaluate(trained[recipe], attack, dataset="digits", n=20, results=tmp_path, progress=False)
        assert s.n == 20 and 0 <= s.robust_acc <= s.clean_acc <= 1


@pytest.mark.parametrize("recipe, params, message", [
    ("armor-kl", {"base": "trades", "radius": float("nan")}, "radius"),
    ("armor-kl", {"base": "trades", "radius": 0.1, "kappa": -1}, "kappa"),
    ("armor-kl", {"base": "pgd-at", "radius": 0.1, "beta": 6}, "beta belongs to a TRADES or MART base"),
    ("armor-kl", {"base": "udr", "radius": 0.1}, "base"),
    ("armor-alpha", {"base": "mart", "radius": 0.5, "alpha": 1}, "alpha"),
    ("armor-alpha", {"base": "mart", "radius": 0.5, "alpha": 6, "dual_lr": float("inf")}, "dual_lr"),
    ("trades", {"lr_milestones": [0]}, "lr_milestones"),
    ("mart", {"steps": 10**6}, "must be between 1 and 100,000"),
])
def test_impossible_recipe_params_are_refused_by_train(tmp_path, recipe, params, message):
    card = _card(tmp_path, recipe, RECIPE_CARDS[recipe] | params)
    result = CliRunner().invoke(app, ["train", str(card)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert message in result.output


def _fingerprint_card(recipe: str) -> dict:
    """The recipe's tiny fingerprint card (valid params for it), references made absolute."""
    folder = Path(__file__).resolve().parents[1] / "fingerprints" / "recipes"
    card = yaml.safe_load((folder / f"{recipe}.yaml").read_text())
    params = card["recipe"]["params"]
    for key in ("cvae", "classifier"):
        if key in params:
            params[key] = str((folder / params[key]).resolve())
    base = yaml.safe_load((folder / card.pop("include")).read_text()) if "include" in card else {}
    return {**base, **card}


def test_every_recipe_and_architecture_on_a_card_of_another_task_is_refused_naming_what_fits(tmp_path):
    """A recipe or an architecture of another task failed deep inside the training loop with a traceback (or, for
    some pairs, trained something meaningless): the card is refused before anything is built, naming the part
    that does not fit and what would."""
    from bench.models.archs import ARCHITECTURES, TASK_OF
    from bench.recipes.base import RECIPES, recipes_for

    def refused(card: dict, says: str) -> None:
        path = tmp_path / f"{card['id']}.yaml"
        path.write_text(yaml.safe_dump(card))
        out = CliRunner().invoke(app, ["train", str(path)])
        assert out.exit_code == 2 and says in " ".join(out.output.split()), out.output
        assert "takes one of" in out.output and "Traceback" not in out.output

    architectures = ARCHITECTURES.names()  # every family's imported: their architectures' tasks are known
    assert set(architectures) <= set(TASK_OF), "every architecture bench ships says its task: architecture(task=)"
    tasks = sorted({TASK_OF[name] for name in architectures})
    assert tasks == ["classifier", "generative", "perturbation-set", "translator"]
    for recipe in RECIPES.names():
        own = RECIPES.get(recipe).tasks
        for task in (t for t in tasks if t not in own):
            card = {**_fingerprint_card(recipe), "id": f"misfit-{recipe}-{task}", "task": task}
            refused(card, f"recipe {recipe} trains {' or '.join(own)} models, not {task} ones")
    for name in architectures:
        for task in (t for t in tasks if t != TASK_OF[name]):
            card = {**_fingerprint_card(recipes_for(task)[0]), "id": f"misfit-{name}-{task}", "task": task,
                    "architecture": {"name": name, "kwargs": {}}}
            refused(card, f"architecture {name} makes {TASK_OF[name]} models, not {task} ones")
