"""The method families, one package each: its models, recipes, threats, metrics, report and commands.

The core (cards, registry, tasks, metrics, run, store, board, CLI root) imports no family; it finds
them through ``PACKAGES``, the one place a family is plugged in. Each package has ``register()``,
which registers its entries into the core registries, and may name a ``COMMAND`` whose sub-commands
live in its ``cli.py`` (`bench COMMAND ...`). See docs/architecture.md, "Adding a family".
"""

PACKAGES = ("bench.families.learned_sets", "bench.families.corruptions", "bench.families.ood_to_id",
            "bench.families.vae_robustness")
