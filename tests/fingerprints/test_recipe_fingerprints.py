"""A forgotten recipe revision bump fails here, naming the recipe: every recipe trained from its fingerprint card
(``recipes/``, a tiny model for two epochs of four batches) must give the recorded weights and history
(``recipes/<key>.json``) unless the card's training hash changed, in which case the fingerprint is recorded again
(``update.py --recipe KEY``). A recipe's revision is in its cards' training hashes, so weights trained by older
code are never taken from the cache, or from the shipped ones, for a newer recipe."""
from __future__ import annotations

import pytest
from fingerprint import elsewhere, expected
from training import (RECIPE_FOLDER, compare_training, compute_training, read_training, recipe_keys, recipe_of,
                      revision_site)

from bench.models.card import as_card


@pytest.mark.parametrize("key", recipe_keys())
def test_trained_weights_change_only_with_a_revision_bump(key, tmp_path):
    recorded = read_training(key)
    assert recorded is not None, (f"recipe {key} has no recorded fingerprint: run `python tests/fingerprints/update.py "
                                  f"--recipe {key}`")
    current = compute_training(key, tmp_path)
    if recorded["training_hash"] != current["training_hash"]:
        pytest.fail(f"recipe {key}: its card's training hash changed (revisions {recorded['revisions']} recorded, "
                    f"{current['revisions']} now): record its new fingerprint with `python "
                    f"tests/fingerprints/update.py --recipe {key}`")
    problems = compare_training(expected(recorded), current)
    assert not problems, (
        f"recipe {key}: what it trains changed ({'; '.join(problems)}) but its revision is still "
        f"{current['revisions']['recipe']}: bump {revision_site(key)} (where every recipe changed, "
        "bench.recipes.base.LOOP_REVISION; where only the model did, its architecture's revision), then run "
        f"`python tests/fingerprints/update.py --recipe {key}`."
        + elsewhere(recorded, f"python tests/fingerprints/update.py --platform --recipe {key}"))


def test_every_recipe_has_a_fingerprint_card():
    from bench.recipes import RECIPES

    missing = set(RECIPES.names()) - {recipe_of(key) for key in recipe_keys()}
    assert not missing, (f"recipes without a fingerprint: add tests/fingerprints/recipes/<recipe>.yaml (a tiny card) "
                         f"for each of {sorted(missing)} and run `python tests/fingerprints/update.py --recipe "
                         "<recipe>`")


def test_a_changed_schedule_is_caught_and_named(tmp_path, monkeypatch):
    """What the test above reports when someone changes the shared learning-rate schedule without a bump."""
    from bench.recipes.base import Recipe

    recorded = read_training("standard")
    assert compare_training(recorded, compute_training("standard", tmp_path / "same")) == []
    lr = Recipe.lr
    monkeypatch.setattr(Recipe, "lr", lambda self, progress: lr(self, progress) * 1.01)
    problems = compare_training(recorded, compute_training("standard", tmp_path / "changed"))
    assert any(p.startswith("weights ") for p in problems) and "the training history changed" in problems
    assert revision_site("pgd-at") == "bench.recipes.standard.PGDAdversarialTraining.revision"


def test_a_bumped_revision_changes_the_training_hash_and_revision_0_changes_none(monkeypatch):
    import bench.recipes.base as base
    from bench.recipes.standard import PGDAdversarialTraining

    path = RECIPE_FOLDER / "pgd-at.yaml"
    before = as_card(path).training_hash
    monkeypatch.setattr(PGDAdversarialTraining, "revision", 1)
    bumped = as_card(path).training_hash
    monkeypatch.setattr(PGDAdversarialTraining, "revision", 0)
    monkeypatch.setattr(base, "LOOP_REVISION", 1)
    loop = as_card(path).training_hash
    assert len({before, bumped, loop}) == 3
    assert as_card(RECIPE_FOLDER / "standard.yaml").training_hash != read_training("standard")["training_hash"]

