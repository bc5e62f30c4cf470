"""OOD-to-ID mapping defences (Amich & Eshete, "Rethinking Machine Learning Robustness via its Link with the
Out-of-Distribution Problem", 2022): an image-to-image translator maps an input back to the training
distribution before a frozen classifier, optionally only when a gate calls the input OOD.

- ``translator.py``: the ``translator`` task and the small residual U-Net;
- ``recipe.py``: the translator's recipe, trained by L1 on (shifted, clean) pairs;
- ``defence.py``: the ``translate-then-classify`` composer (a classifier card + a translator card), with
  a differentiable surrogate of its gate for BPDA;
- ``report.py`` and ``cli.py``: `bench ood2id report`, the MNIST reproduction report.

A defence is never ranked on non-adaptive numbers: its cards are attacked end to end (``pgd``,
``autoattack``), through the gate's surrogate (``pgd-bpda``) and by transfer (``pgd-transfer``).
"""


def register() -> None:
    """Register the translator task and architecture, its recipe and the composer."""
    from bench.families.ood_to_id import defence, recipe, translator  # noqa: F401
