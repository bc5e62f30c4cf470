"""Learned perturbation sets (Wong & Kolter, "Learning perturbation sets for robust machine learning",
ICLR 2021): a conditional VAE learns what real perturbations look like, and attacks, training and
certificates act in its latent ball.

- ``cvae.py``: the CVAE and its architectures; ``pairs.py``: real perturbation pairs (registry);
- ``sets.py``: the ``perturbation-set`` task, latent statistics and percentile radii;
- ``recipes.py``: the CVAE recipe and the classifier recipes that use a set;
- ``threats.py`` (``learned-cvae``), ``smoothing.py`` (``latent-smoothing``), ``perturbed.py``
  (``perturbed``), ``quality.py`` (``set-quality``): the threat families;
- ``samples.py``, ``report.py`` and ``cli.py``: `bench perturbation ...`.
"""


def register() -> None:
    """Register the family's architectures, pair sources, task, recipes and threat families."""
    from bench.families.learned_sets import cvae, pairs, perturbed, quality, recipes, sets, smoothing, threats  # noqa: F401
