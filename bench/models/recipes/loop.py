"""The shared training loop: seeded, epoch checkpoints (resumable), progress bar."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from bench.data import Dataset
from bench.models.recipes import Batch, Recipe


def _optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    p = recipe.params
    if p.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay,
                           nesterov=True)


def _save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".part")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def fit(model: nn.Module, recipe: Recipe, train: Dataset, *, seed: int, device: torch.device,
        checkpoint: Path, desc: str) -> nn.Module:
    """Train ``model`` in place. Each finished epoch is checkpointed; a rerun resumes after it.

    Shuffling and attack noise are seeded per epoch, so a resumed run equals an uninterrupted one.
    """
    p = recipe.params
    model.to(device).train()
    opt = _optimizer(model, recipe)
    start_epoch = 0
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"]
    positions = recipe.positions(len(train))
    n = len(positions)
    steps_per_epoch = (n + p.batch_size - 1) // p.batch_size
    total = p.epochs * steps_per_epoch
    bar = tqdm(total=total, initial=start_epoch * steps_per_epoch, desc=desc, unit="batch", dynamic_ncols=True)
    for epoch in range(start_epoch, p.epochs):
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=gen)
        for step in range(steps_per_epoch):
            progress = (epoch * steps_per_epoch + step) / total
            idx = positions[order[step * p.batch_size:(step + 1) * p.batch_size]]
            batch = Batch(train.x[idx].to(device), train.y[idx].to(device), idx, progress, epoch, gen)
            for group in opt.param_groups:
                group["lr"] = recipe.lr(progress)
            loss = recipe.loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", refresh=False)
        _save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1}, checkpoint)
    bar.close()
    return model.eval()


def write_training_record(path: Path, record: dict) -> None:
    record = {**record, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.write_text(json.dumps(record, indent=2))
