"""Common corruptions and natural distribution shifts (issue 11).

- ``library.py``: the 19 CIFAR-10-C / ImageNet-C corruptions in batched torch (Hendrycks & Dietterich, 2019);
  ``mnist_c.py``: the 15 MNIST-C corruptions (Mu & Gilmer, 2019); ``shifts.py``: named graded shifts;
- ``suites.py``: CIFAR-10-C, ImageNet-C and MNIST-C as sets of corruptions with their constants;
- ``grid.py``: evaluation of every point under every (transform, level) cell;
- ``threats.py`` (``corruptions``) and ``ood.py`` (``ood``): the threat families;
- ``files.py``: the published CIFAR-10-C / MNIST-C files on disk and `bench data make`;
- ``board.py``: mCE and relative mCE against a baseline model, and the per-cell table on the board.
"""


def register() -> None:
    """Register the corruptions, shifts, threat families and corrupted-data makers."""
    from bench.families.corruptions import files, ood, threats  # noqa: F401
