"""Common corruptions and natural distribution shifts (issue 11).

- ``library.py``: the 19 CIFAR-10-C / ImageNet-C corruptions in batched torch (Hendrycks & Dietterich, 2019);
  ``mnist_c.py``: the 15 MNIST-C corruptions (Mu & Gilmer, 2019);
- ``suites.py``: CIFAR-10-C, ImageNet-C and MNIST-C as sets of corruptions with their constants;
- ``threats.py`` (``corruptions``) and ``ood.py`` (``ood``, under the core's named shifts
  ``bench.ops.shifts``): the threat families, both grids of the core (``bench.threats.grid``: every point
  under every cell; mCE and the per-cell table on the board);
- ``files.py``: the published CIFAR-10-C / MNIST-C files on disk and `bench data make`.
"""


def register() -> None:
    """Register the corruptions, shifts, threat families and corrupted-data makers."""
    from bench.families.corruptions import files, ood, threats  # noqa: F401
