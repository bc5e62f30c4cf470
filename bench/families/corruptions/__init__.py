"""Common corruptions (Hendrycks & Dietterich, 2019): a batched torch library of the CIFAR-10-C / ImageNet-C
corruptions at five severities (``library.py``).

The corruption and OOD threat families, the corrupted-data loaders and ``bench data make`` follow (issue 11).
"""


def register() -> None:
    """Register the corruptions."""
    from bench.families.corruptions import library  # noqa: F401
