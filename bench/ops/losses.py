"""Losses an attack maximises, per example: ``loss(logits, y, clean_logits) -> (batch,)``.

- ``ce``: cross-entropy with the label (Madry et al., 2018);
- ``kl``: KL(softmax(clean) || softmax(adversarial)), the inner loss of TRADES (Zhang et al., 2019);
  it needs no label and is zero at the clean point, so it needs a random start;
- ``margin``: max over other classes of z_j minus z_y (Carlini & Wagner, 2017): positive once fooled.
"""
from __future__ import annotations

from typing import Annotated, Callable

import torch
import torch.nn.functional as F
from pydantic import AfterValidator
from torch import Tensor

from bench.registry import Registry

AttackLoss = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]
LOSSES: Registry[AttackLoss] = Registry("attack loss")
NEEDS_CLEAN = {"kl"}  # losses that compare with the clean logits


@LOSSES.register("ce")
def cross_entropy(logits: Tensor, y: Tensor, clean: Tensor | None) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


@LOSSES.register("kl")
def kl_to_clean(logits: Tensor, y: Tensor, clean: Tensor | None) -> Tensor:
    if clean is None:
        raise ValueError("the kl attack loss needs the clean logits")
    return F.kl_div(F.log_softmax(logits, 1), F.log_softmax(clean, 1), reduction="none", log_target=True).sum(1)


@LOSSES.register("margin")
def margin(logits: Tensor, y: Tensor, clean: Tensor | None) -> Tensor:
    true = logits.gather(1, y.view(-1, 1)).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -torch.inf)
    return others.amax(1) - true


def _known(name: str) -> str:
    if name not in LOSSES:
        raise ValueError(f"unknown attack loss {name!r}; known: {', '.join(LOSSES.names())}")
    return name


LossName = Annotated[str, AfterValidator(_known)]  # a loss name field in card schemas
