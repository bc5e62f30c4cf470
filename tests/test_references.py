"""References between cards: one field type, resolved from the referring card's folder, checked, and
folded into every hash that depends on the referenced card."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench.errors import CardError
from bench.models import load_model_card, model_ref
from bench.threats import load_threat_card
from bench.recipes.base import RECIPES, Recipe, RecipeParams

CVAE = {"id": "ref-cvae", "dataset": "digits", "task": "perturbation-set",
        "architecture": {"name": "cvae-stn", "kwargs": {"channels": 1, "side": 8, "latent": 4, "width": 4}},
        "recipe": {"name": "cvae", "seed": 0, "params": {
            "epochs": 1, "val_size": 50, "pairs": {"kind": "rts", "rotation": 10},
            "beta": {"knots": [0], "values": [1.0]}}}}
CLASSIFIER = {"dataset": "digits", "architecture": {"name": "small-cnn", "kwargs": {"input_size": 8}}}


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class TeacherParams(RecipeParams):
    teacher: model_ref("classifier")


@pytest.fixture
def distillation(monkeypatch):
    """A test recipe with another kind of reference (a teacher classifier): the mechanism is not CVAE-only."""
    RECIPES.names()
    monkeypatch.setitem(RECIPES._entries, "test-distill", type("Distill", (Recipe,), {"Params": TeacherParams}))


@pytest.fixture
def cards(tmp_path, distillation) -> dict[str, Path]:
    """A CVAE and a teacher in sets/, and every kind of card referring to them, from another folder."""
    sets = tmp_path / "sets"
    write(sets / "ref-cvae.yaml", CVAE)
    write(sets / "teacher.yaml", {"id": "teacher", **CLASSIFIER,
                                  "recipe": {"name": "standard", "params": {"epochs": 1}}})
    users = tmp_path / "users"
    return {
        "cvae": sets / "ref-cvae.yaml", "teacher": sets / "teacher.yaml",
        "aug": write(users / "aug.yaml", {"id": "aug", **CLASSIFIER, "recipe": {
            "name": "cvae-aug", "params": {"epochs": 1, "cvae": "../sets/ref-cvae.yaml"}}}),
        "student": write(users / "student.yaml", {"id": "student", **CLASSIFIER, "recipe": {
            "name": "test-distill", "params": {"epochs": 1, "teacher": "../sets/teacher.yaml"}}}),
        "attack": write(users / "attack.yaml", {"id": "attack", "family": "learned-cvae",
                                                "params": {"cvae": "../sets/ref-cvae.yaml", "eps": 1.0}}),
        "smoothing": write(users / "smooth.yaml", {"id": "smooth", "family": "latent-smoothing",
                                                   "params": {"cvae": "../sets/ref-cvae.yaml", "sigma": 0.5}}),
    }


def hashes(cards: dict[str, Path]) -> dict[str, str]:
    out = {}
    for name in ("aug", "student"):
        card = load_model_card(cards[name])
        out[f"{name} card"], out[f"{name} training"] = card.hash, card.training_hash
    for name in ("attack", "smoothing"):
        out[f"{name} protocol"] = load_threat_card(cards[name]).hash
    return out


def test_references_resolve_from_the_referring_cards_folder_not_the_cwd(cards, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "sets")  # from here "../sets/ref-cvae.yaml" would still work; from / it would not
    monkeypatch.chdir("/")
    recipe = load_model_card(cards["aug"]).make_recipe()
    assert recipe.params.cvae.card.id == "ref-cvae" and recipe.params.cvae.name == "../sets/ref-cvae.yaml"
    assert load_threat_card(cards["attack"]).validated_params().cvae.card.id == "ref-cvae"
    assert load_model_card(cards["student"]).make_recipe().params.teacher.card.id == "teacher"


@pytest.mark.parametrize("referenced, dependents", [
    ("cvae", ["aug card", "aug training", "attack protocol", "smoothing protocol"]),
    ("teacher", ["student card", "student training"]),
])
def test_changing_a_referenced_card_changes_every_hash_that_depends_on_it(cards, referenced, dependents):
    before = hashes(cards)
    data = yaml.safe_load(cards[referenced].read_text())
    data["recipe"]["seed"] = 7  # another training: other weights
    write(cards[referenced], data)
    after = hashes(cards)
    changed = sorted(k for k in before if before[k] != after[k])
    assert changed == sorted(dependents)


def test_prose_of_a_referenced_card_changes_no_hash(cards):
    before = hashes(cards)
    data = yaml.safe_load(cards["cvae"].read_text())
    data["description"] = "now with a description"
    write(cards["cvae"], data)
    assert hashes(cards) == before


def test_a_reference_to_the_wrong_task_or_nothing_is_a_card_error(cards, tmp_path):
    wrong = write(tmp_path / "users" / "wrong.yaml", {"id": "wrong", **CLASSIFIER, "recipe": {
        "name": "cvae-aug", "params": {"epochs": 1, "cvae": "../sets/teacher.yaml"}}})
    with pytest.raises(CardError, match="teacher is a classifier card, not a perturbation-set card") as err:
        load_model_card(wrong).hash
    assert "recipe.params" in err.value.problem and "'cvae'" in err.value.problem
    missing = write(tmp_path / "users" / "missing.yaml", {"id": "missing", "family": "learned-cvae",
                                                         "params": {"cvae": "../sets/nowhere.yaml", "eps": 1.0}})
    with pytest.raises(CardError, match="nowhere.yaml does not exist"):
        load_threat_card(missing).hash


def test_a_reference_cycle_is_a_card_error(tmp_path, distillation):
    write(tmp_path / "a.yaml", {"id": "a", **CLASSIFIER, "recipe": {"name": "test-distill", "params": {
        "epochs": 1, "teacher": "b.yaml"}}})
    write(tmp_path / "b.yaml", {"id": "b", **CLASSIFIER, "recipe": {"name": "test-distill", "params": {
        "epochs": 1, "teacher": "a.yaml"}}})
    with pytest.raises(CardError, match="reference cycle"):
        load_model_card(tmp_path / "a.yaml").hash
