"""Learned perturbation sets (Wong & Kolter, "Learning perturbation sets for robust machine learning",
ICLR 2021): a conditional VAE learns what real perturbations look like, and attacks, training and
certificates act in its latent ball.

- ``cvae.py``: the CVAE and its architectures; ``pairs.py``: real perturbation pairs (registry);
- ``sets.py``: the ``perturbation-set`` task, latent statistics and percentile radii;
- ``recipes.py``: the CVAE recipe and the classifier recipes that use a set;
- ``latent_ensemble.py`` (``learned-cvae``, the default), ``threats.py`` (``learned-cvae-pgd``, ``-apgd``,
  ``-random``, ``-transfer``; latent PGD and APGD in ``latent_pgd.py``, ``latent_apgd.py``), ``smoothing.py``
  (``latent-smoothing``), ``perturbed.py`` (``perturbed``), ``quality.py`` (``set-quality``), ``real_grid.py``
  (``learned-cvae-real-grid``, the real family searched inside the learned ball), ``real_fit.py``
  (``learned-cvae-real-fit``, real transformations fitted to the ensemble's examples), ``smooth_attack.py``
  (``latent-smoothing-attack``, the smoothed classifier attacked): the threat families;
- ``samples.py``, ``report.py`` and ``cli.py``: `bench perturbation ...`.
"""


def register() -> None:
    """Register the family's architectures, pair sources, task, recipes and threat families."""
    from bench.families.learned_sets import (cvae, latent_ensemble, pairs, perturbed, quality,  # noqa: F401
                                             real_fit, real_grid, recipes, sets, smooth_attack, smoothing,
                                             threats)
