"""Helpers for tests of bench and of users' own CI: a tiny trained model and inline threat cards."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.threats import ThreatCard
from bench.data import load_dataset
from bench.models.archs.small import small_cnn


def tiny_digits_model(seed: int = 0, epochs: int = 30) -> torch.nn.Module:
    """A small CNN trained (not robustly) on 8x8 digits in about a second: ~90% clean accuracy."""
    torch.manual_seed(seed)
    train = load_dataset("digits", "train")
    model = small_cnn(input_size=8)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(epochs):
        for i in range(0, len(train), 64):
            loss = F.cross_entropy(model(train.x[i:i + 64]), train.y[i:i + 64])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


def threat_card(family: str, card_id: str | None = None, **params) -> ThreatCard:
    """A threat card built in code, e.g. ``threat_card("pgd", norm="Linf", eps=0.1, steps=10)``."""
    return ThreatCard(id=card_id or f"test-{family}", family=family, params=params)


def fit_resumed(make, data, checkpoint, *, interrupt_at: float | None = None):
    """Train the (model, recipe) that ``make()`` builds (after seeding torch with 0) and return (model, recipe,
    history); with ``interrupt_at``, first kill that training at this share of its steps (a KeyboardInterrupt from
    the loss, as Ctrl-C gives) and resume it from its checkpoint with a fresh model and recipe: what an
    interrupted training must reproduce exactly."""
    from bench.training.loop import fit

    cpu = torch.device("cpu")
    if interrupt_at is not None:
        torch.manual_seed(0)
        model, recipe = make()
        real = recipe.loss

        def dies(model, batch):
            if batch.progress >= interrupt_at:
                raise KeyboardInterrupt
            return real(model, batch)

        recipe.loss = dies
        try:
            fit(model, recipe, data, seed=0, device=cpu, checkpoint=checkpoint, desc=checkpoint.stem)
        except KeyboardInterrupt:
            pass
        else:
            raise AssertionError(f"the training was not interrupted at {interrupt_at}")
    torch.manual_seed(0)
    model, recipe = make()
    history = fit(model, recipe, data, seed=0, device=cpu, checkpoint=checkpoint, desc=checkpoint.stem)
    return model, recipe, history
