"""Fingerprints of the training recipes: what each recipe trains from its card under ``recipes/`` (a tiny model, two
epochs of four batches of digits, one CPU thread, a fresh cache), recorded in ``recipes/<key>.json`` with the
card's training hash. ``test_recipe_fingerprints.py`` trains them again: weights or a training history that
changed under an unchanged training hash mean a forgotten revision bump (the recipe's, the training loop's, or
the architecture's), the training-side twin of the threat families' fingerprints (``fingerprint.py``).

A key is a recipe's name, or ``<recipe>@<variant>`` for another of its code paths (``vae@provae``). Other machines
may train the tiny models to other last bits, as they compute other passes: the same ``platform`` and
``platforms`` scheme as the families' (``update.py --platform --recipe KEY``).
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from fingerprint import FOLDER, _close, _digits, platform_signature

RECIPE_FOLDER = FOLDER / "recipes"


def recipe_of(key: str) -> str:
    """The recipe a fingerprint key names (``vae@provae`` -> ``vae``)."""
    return key.split("@", 1)[0]


def recipe_keys() -> list[str]:
    """Every recipe fingerprint card (``_``-prefixed files are includes)."""
    return sorted(p.stem for p in RECIPE_FOLDER.glob("*.yaml") if not p.name.startswith("_"))


def revision_site(key: str) -> str:
    """Where the revision that guards the recipe's own code lives, e.g. ``bench.recipes.standard.PGDAdversarialTraining
    .revision``."""
    from bench.recipes import RECIPES

    cls = RECIPES.get(recipe_of(key))
    return f"{cls.__module__}.{cls.__qualname__}.revision"


@contextlib.contextmanager
def _one_thread_in(cache: Path):
    threads, before = torch.get_num_threads(), os.environ.get("BENCH_CACHE")
    torch.set_num_threads(1)
    os.environ["BENCH_CACHE"] = str(cache)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if before is None:
            os.environ.pop("BENCH_CACHE", None)
        else:
            os.environ["BENCH_CACHE"] = before


def compute_training(key: str, work: Path) -> dict[str, Any]:
    """The recipe's fingerprint, trained now in ``work`` (its cache and results): the card's training hash, the
    revisions in it, every weight tensor's size, sum and sum of squares, and the training history."""
    from safetensors.torch import load_file

    import bench
    from bench.models.archs import revision
    from bench.models.card import as_card
    from bench.recipes.base import LOOP_REVISION

    card = as_card(RECIPE_FOLDER / f"{key}.yaml")
    with _one_thread_in(work / "cache"):
        path = bench.train(card, fresh=True, results=work / "results")
        record = json.loads(path.with_suffix(".json").read_text())
        weights = load_file(str(path))
    tensors = []
    for name in sorted(weights):
        flat = weights[name].double()
        tensors.append([name, int(flat.numel()), _digits(flat.sum()), _digits((flat * flat).sum())])
    history = [{k: _digits(v) if isinstance(v, float) else v for k, v in epoch.items()} for epoch in record["history"]]
    return {"recipe": key, "training_hash": card.training_hash,
            "revisions": {"recipe": card.make_recipe().revision, "loop": LOOP_REVISION,
                          "architecture": revision(card.architecture.name)},
            "platform": platform_signature(), "weights": tensors, "history": history}


def compare_training(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Where the current training differs from the recorded one (empty: the same, to float tolerance)."""
    problems = []
    old, new = {t[0]: t[1:] for t in recorded["weights"]}, {t[0]: t[1:] for t in current["weights"]}
    if set(old) != set(new):
        problems.append(f"weight tensors {sorted(old)} recorded, {sorted(new)} now")
    changed = [name for name in sorted(set(old) & set(new))
               if old[name][0] != new[name][0] or not all(_close(a, b) for a, b in zip(old[name][1:], new[name][1:]))]
    if changed:
        problems.append(f"weights {', '.join(changed[:3])}{' and more' if len(changed) > 3 else ''} changed")
    a, b = recorded["history"], current["history"]
    if len(a) != len(b) or any(set(x) != set(y) or any(
            not _close(x[k], y[k]) if isinstance(x[k], float) else x[k] != y[k] for k in x) for x, y in zip(a, b)):
        problems.append("the training history changed")
    return problems


def path_of(key: str) -> Path:
    return RECIPE_FOLDER / f"{key}.json"


def read_training(key: str) -> dict[str, Any] | None:
    path = path_of(key)
    return json.loads(path.read_text()) if path.is_file() else None


def write_training(fingerprint: dict[str, Any]) -> Path:
    path = path_of(fingerprint["recipe"])
    path.write_text(json.dumps(fingerprint, separators=(",", ":")) + "\n")
    return path
