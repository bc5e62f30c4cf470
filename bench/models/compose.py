"""Models composed from other cards' models: a card's ``compose:`` block names a composer, a card per role
and the composer's params.

A composer declares its roles (role -> the task the part's card must have), a params schema, and
``build(parts, card, device)`` that returns the composed nn.Module from the parts' built models. The
composed card's hash folds in each part's hash and the validated params, so changing a part re-runs
everything that used the composition. Method families register composers (e.g. the OOD-to-ID defence).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
from torch import nn

from bench.cards import validate
from bench.errors import CardError
from bench.params import Params
from bench.registry import Registry

if TYPE_CHECKING:
    from bench.models.card import CardRef, Compose, ModelCard


class Composer(ABC):
    roles: ClassVar[dict[str, str]]  # role -> task of the card that fills it
    Params: ClassVar[type[Params]] = Params

    def __init__(self, params: Params):
        self.params = params

    @abstractmethod
    def build(self, parts: dict[str, nn.Module], card: ModelCard, device: torch.device) -> nn.Module:
        """The composed model (eval mode, on ``device``) from the parts' built models."""


COMPOSERS: Registry[type[Composer]] = Registry("composer")


@dataclass(frozen=True)
class Composition:
    name: str
    composer: Composer
    parts: dict[str, CardRef]

    def identity(self) -> dict:
        return {"name": self.name, "parts": {role: ref.hash for role, ref in sorted(self.parts.items())},
                "params": self.composer.params.model_dump(mode="json")}


def composition(block: Compose, where: str, source_dir: str | None, dataset: str,
                resolve_ref: Callable[[Any, str | None, str], CardRef]) -> Composition:
    """Resolve a compose: block: its composer, one card of the right task per role (``resolve_ref(value,
    source_dir, task)``, the card module's reference resolver), validated params. A part made for another
    dataset than the composed card's is refused here, before anything is built or trained."""
    cls = COMPOSERS.get(block.name, where)
    if set(block.parts) != set(cls.roles):
        raise CardError(f"{where}: composer {block.name} takes the parts {', '.join(sorted(cls.roles))}, "
                        f"got {', '.join(sorted(block.parts)) or 'none'}", "name one card per role under compose.parts")
    parts = {}
    for role, task in cls.roles.items():
        try:
            parts[role] = resolve_ref(block.parts[role], source_dir, task)
        except ValueError as err:
            raise CardError(f"{where}: compose.parts.{role}: {err}", f"name a {task} card for {role}") from None
        if parts[role].card.dataset != dataset:
            raise CardError(f"{where}: compose.parts.{role}: {parts[role].card.id} is made for "
                            f"{parts[role].card.dataset}, the composed model for {dataset}",
                            f"name a {task} card for {dataset}, or set the composed card's dataset")
    params = validate(cls.Params, block.params, f"{where} compose.params", {"source_dir": source_dir})
    return Composition(block.name, cls(params), parts)


def build_composed(card: ModelCard, device: torch.device, build_part) -> nn.Module:
    """The card's composed model; ``build_part(card)`` builds (and if needed trains) one part."""
    plan = card.composition
    parts = {role: build_part(ref.card) for role, ref in plan.parts.items()}
    return plan.composer.build(parts, card, device).to(device).eval()
