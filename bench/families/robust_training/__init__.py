"""Robust training recipes (issue 22): TRADES, MART and ARMOR_D, reproduced against each other.

- ``objectives.py``: the per-example PGD-AT, TRADES and MART losses; the KL and alpha-divergence duals of
  ARMOR_D (Birrell & Ebrahimi, "Adversarially robust learning with optimal transport regularized divergences",
  arXiv 2309.03791) with their sample weights;
- ``recipes.py``: the ``trades``, ``mart``, ``armor-kl`` and ``armor-alpha`` recipes (ARMOR_D on a PGD-AT,
  TRADES or MART base; the inner maximisation is the core ``pgd-at`` recipe's, the suite's PGD);
- ``report.py`` and ``cli.py``: `bench robust-training report`, the MNIST reproduction report (clean, PGD and
  AutoAttack accuracy per recipe and seed, and ARMOR_D paired against its base per seed).

Cards: ``models/robust-training/`` (MNIST, CPU-sized; CIFAR-10 ResNet-18 and WRN-34-10, GPU jobs) and
``attacks/robust-training/`` (the report's PGD with restarts).
"""


def register() -> None:
    """Register the recipes."""
    from bench.families.robust_training import recipes  # noqa: F401
