"""A tiny conv-vae card on 8x8 digits (trained in about a second) for the VAE tests."""
from __future__ import annotations

from pathlib import Path

import yaml

TINY = {"id": "tiny-vae", "dataset": "digits", "task": "generative",
        "architecture": {"name": "conv-vae", "kwargs": {"channels": 1, "side": 8, "latent": 4, "width": 8}},
        "recipe": {"name": "vae", "seed": 0, "params": {"epochs": 3, "batch_size": 64, "lr": 0.003}}}


def write_card(folder: Path, **changes) -> str:
    """TINY with top-level ``changes``, written as <id>.yaml in ``folder``; its path."""
    data = {**TINY, **changes}
    path = folder / f"{data['id']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)
