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
