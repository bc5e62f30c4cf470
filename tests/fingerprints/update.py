"""Record the families' fingerprints after a revision bump, or make the tiny models they run on.

    python tests/fingerprints/update.py FAMILY [FAMILY ...]   # after bumping FAMILY's revision
    python tests/fingerprints/update.py --all                # e.g. after bumping the core's or a task's
    python tests/fingerprints/update.py --models             # retrain the tiny models (then --all)
    python tests/fingerprints/update.py --platform FAMILY    # this machine's outputs of unchanged code
    python tests/fingerprints/update.py --recipe KEY         # after bumping a recipe's revision (training.py)
    python tests/fingerprints/update.py --recipes            # every recipe (e.g. after bumping LOOP_REVISION)
    python tests/fingerprints/update.py --platform --recipe KEY

Only record a fingerprint for a family whose revision you bumped (or that is new): recording over a changed
output under the same revision hides exactly what the fingerprint test exists to catch. ``--platform`` is for a
machine that computes the tiny models' passes differently (the test says so): it adds this machine's outputs
beside the recorded ones, only under the recorded implementation identity, and only from code that has not
changed (a clean checkout).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fingerprint import FOLDER, VARIANTS, compute, platform_signature, read, write  # noqa: E402
from training import compute_training, read_training, recipe_keys, write_training  # noqa: E402

TINY = {  # card -> what it trains (weights are committed, so training need not be bit-reproducible elsewhere)
    "digits-cnn": {"task": "classifier", "architecture": {"name": "small-cnn", "kwargs": {"input_size": 8}},
                   "recipe": {"name": "standard", "seed": 0, "params": {"epochs": 3, "batch_size": 64}}},
    "digits-cnn-b": {"task": "classifier", "architecture": {"name": "small-cnn", "kwargs": {"input_size": 8}},
                     "recipe": {"name": "standard", "seed": 1, "params": {"epochs": 3, "batch_size": 64}}},
    "digits-cvae": {"task": "perturbation-set",
                    "architecture": {"name": "cvae-stn", "kwargs": {"channels": 1, "side": 8, "latent": 4,
                                                                     "width": 4}},
                    "recipe": {"name": "cvae", "seed": 0, "params": {
                        "epochs": 2, "batch_size": 64, "train_subset": 512, "val_size": 64, "stats_passes": 1,
                        "pairs": {"kind": "rts", "rotation": 20}, "beta": {"knots": [0], "values": [1.0]}}}},
    "digits-vae": {"task": "generative",
                   "architecture": {"name": "conv-vae", "kwargs": {"channels": 1, "side": 8, "latent": 4, "width": 8}},
                   "recipe": {"name": "vae", "seed": 0, "params": {"epochs": 3, "batch_size": 64, "lr": 0.003}}},
    "digits-lipschitz-vae": {"task": "generative",
                             "architecture": {"name": "lipschitz-vae", "kwargs": {"channels": 1, "side": 8,
                                                                                  "latent": 4, "hidden": 64,
                                                                                  "sigma_max": 0.3}},
                             "recipe": {"name": "vae", "seed": 0, "params": {"epochs": 5, "batch_size": 64,
                                                                             "lr": 0.003}}},
}


def make_models() -> None:
    """Train each tiny card and commit its weights beside a card that ships them (sha256 pinned)."""
    import bench
    from bench.models.weights import sha256_file

    with tempfile.TemporaryDirectory() as work:
        os.environ["BENCH_CACHE"] = work  # trained here, kept only as the committed copies
        for name, spec in TINY.items():
            card = {"id": f"fingerprint-{name}", "dataset": "digits", **spec}
            source = Path(work) / f"{name}.yaml"
            source.write_text(yaml.safe_dump(card))
            weights = FOLDER / "models" / f"{name}.safetensors"
            shutil.copyfile(bench.train(str(source), results=Path(work) / "results"), weights)
            shipped = {k: v for k, v in card.items() if k != "recipe"}
            shipped["weights"] = {"file": weights.name, "sha256": sha256_file(weights)}
            (FOLDER / "models" / f"{name}.yaml").write_text(yaml.safe_dump(shipped, sort_keys=False))
            print(f"trained {name}")


def record_platform(family: str) -> None:
    """This machine's outputs beside the recorded ones, for code whose identity has not changed."""
    from bench.implementation import differences

    old = read(family)
    with tempfile.TemporaryDirectory() as results:
        new = compute(family, Path(results))
    if old is None or differences(old["implementation"], new["implementation"], ("recorded", "now")):
        sys.exit(f"{family}: its implementation identity changed: record it whole (without --platform)")
    _beside(old, {"rows": new["rows"], "calls": new["calls"]}, family)
    write(old)


def record_recipe(key: str, platform: bool) -> None:
    """A recipe's training fingerprint, whole or (``platform``) this machine's beside the recorded one."""
    old = read_training(key)
    with tempfile.TemporaryDirectory() as work:
        new = compute_training(key, Path(work))
    if platform:
        if old is None or old["training_hash"] != new["training_hash"]:
            sys.exit(f"recipe {key}: its training hash changed: record it whole (without --platform)")
        _beside(old, {"weights": new["weights"], "history": new["history"]}, f"recipe {key}")
        write_training(old)
        return
    write_training(new)
    was = "new" if old is None else f"was revision {old['revisions']['recipe']}"
    print(f"recipe {key}: recorded at revision {new['revisions']['recipe']} ({was})")


def _beside(old: dict, outputs: dict, name: str) -> None:
    here = platform_signature()
    if here == old.get("platform"):
        sys.exit(f"{name}: this machine ({here}) recorded it: a difference here is a change of code")
    old.setdefault("platforms", {})[here] = outputs
    print(f"{name}: recorded this machine's outputs (platform {here}) beside those of {old.get('platform')}")


def main() -> None:
    from bench.threats import THREAT_FAMILIES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("families", nargs="*")
    parser.add_argument("--all", action="store_true")
    parser.add_argument("--models", action="store_true")
    parser.add_argument("--platform", action="store_true")
    parser.add_argument("--recipe", action="append", default=[], metavar="KEY")
    parser.add_argument("--recipes", action="store_true")
    args = parser.parse_args()
    if args.models:
        make_models()
    for key in recipe_keys() if args.recipes else args.recipe:
        record_recipe(key, args.platform)
    if args.platform:
        for family in args.families:
            record_platform(family)
        return
    for family in THREAT_FAMILIES.names() + sorted(VARIANTS) if args.all else args.families:
        with tempfile.TemporaryDirectory() as results:
            new = compute(family, Path(results))
        old = read(family)
        write(new)
        revision = new["implementation"]["family"]["revision"]
        was = "new" if old is None else f"was revision {old['implementation']['family']['revision']}"
        print(f"{family}: recorded at revision {revision} ({was})")


if __name__ == "__main__":
    main()
