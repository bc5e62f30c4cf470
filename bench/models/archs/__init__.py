"""Architecture registry: a model card's ``architecture.name`` picks a builder.

Core builders: ``small-cnn`` and ``lenet`` (``small.py``), CIFAR residual networks (``resnets.py``);
method families register their own (e.g. the learned-set CVAEs).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from bench.errors import CardError
from bench.registry import Registry

Builder = Callable[..., nn.Module]
ARCHITECTURES: Registry[Builder] = Registry("architecture", providers=("bench.models.archs.small",
                                                                       "bench.models.archs.resnets"))
REVISIONS: dict[str, int] = {}
TASK_OF: dict[str, str] = {}


def architecture(name: str, revision: int = 0, task: str | None = None) -> Callable[[Builder], Builder]:
    """Register a builder. ``revision`` counts changes to what it makes; it is part of every training
    hash that uses the architecture, so weights trained by an older revision never load into a newer one.
    ``task``: what its models are (a card of another task is refused before anything is built or trained);
    every architecture bench ships says it, one registered without it serves any task, as before."""
    def wrap(fn: Builder) -> Builder:
        ARCHITECTURES.register(name, fn)
        REVISIONS[name] = revision
        if task is not None:
            TASK_OF[name] = task
        return fn

    return wrap


def revision(name: str) -> int:
    """The architecture's revision, after importing the family that provides it: read before that import, a
    family's architecture would hash without its revision, so one card would have two training hashes."""
    if name in ARCHITECTURES:
        ARCHITECTURES.get(name)
    return REVISIONS.get(name, 0)


def build(name: str, kwargs: dict, where: str, task: str | None = None) -> nn.Module:
    """The architecture's model; for a card of ``task``, only an architecture of that task (else its model fails
    deep inside training or a run, with a traceback)."""
    builder = ARCHITECTURES.get(name, where)
    makes = TASK_OF.get(name)
    if task is not None and makes is not None and makes != task:
        fitting = [other for other in ARCHITECTURES.names() if TASK_OF.get(other) == task]
        raise CardError(f"{where}: architecture {name} makes {makes} models, not {task} ones",
                        f"a {task} card takes one of: {', '.join(fitting) or 'none'}; or give it task: {makes}")
    try:
        return builder(**kwargs)
    except TypeError as err:
        raise CardError(f"{where}: bad kwargs for architecture {name!r}: {err}",
                        "fix architecture.kwargs in the card") from err
