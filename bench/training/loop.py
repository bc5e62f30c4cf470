"""The shared training loop: seeded, one checkpoint per epoch (resumable), progress bar, validation.

A checkpoint holds the model, every optimiser (one per parameter group), the recipe's own state,
the per-epoch history and, with validation, the best epoch's weights; a rerun resumes after the last
finished epoch and ends with exactly the weights an uninterrupted run would have.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from bench.data import Dataset, subset_indices
from bench.errors import WeightsError
from bench.files import atomic_write
from bench.recipes.base import Batch, Recipe


def _load_checkpoint(path: Path, device: torch.device) -> dict:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001  (any unreadable checkpoint means the same: start again)
        raise WeightsError(f"the training checkpoint {path} cannot be read ({err})",
                           "rerun with --fresh to start the training again") from err
    if not isinstance(state, dict) or "optimizers" not in state:
        raise WeightsError(f"{path} is a checkpoint of an older bench version",
                           "rerun with --fresh to start the training again")
    return state


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def fit(model: nn.Module, recipe: Recipe, train: Dataset, *, seed: int, device: torch.device,
        checkpoint: Path, desc: str) -> list[dict[str, float]]:
    """Train ``model`` in place and return the per-epoch history (epoch, train_loss, validation metrics).

    Shuffling and attack noise are seeded per epoch, so a resumed run equals an uninterrupted one.
    With validation, the model ends with the weights of the best epoch by the chosen metric.
    """
    p = recipe.params
    model.to(device).train()
    groups = recipe.parameter_groups(model)
    optimizers = {g.name: g.build() for g in groups}
    start_epoch, history, best = 0, [], None
    if checkpoint.is_file():
        state = _load_checkpoint(checkpoint, device)
        model.load_state_dict(state["model"])
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        recipe.load_state_dict(state["recipe"])
        start_epoch, history, best = state["epoch"], state["history"], state.get("best")
    validation = p.validation
    held_out = subset_indices(len(train), None)[:validation.size] if validation else None
    positions = recipe.positions(len(train))
    n = len(positions)
    steps_per_epoch = (n + p.batch_size - 1) // p.batch_size
    total = p.epochs * steps_per_epoch
    bar = tqdm(total=total, initial=start_epoch * steps_per_epoch, desc=desc, unit="batch", dynamic_ncols=True)
    for epoch in range(start_epoch, p.epochs):
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=gen)
        loss_sum = 0.0
        for step in range(steps_per_epoch):
            progress = (epoch * steps_per_epoch + step) / total
            idx = positions[order[step * p.batch_size:(step + 1) * p.batch_size]]
            batch = Batch(train.x[idx].to(device), train.y[idx].to(device), idx, progress, epoch, gen)
            for group in groups:
                if group.scheduled:
                    for param_group in optimizers[group.name].param_groups:
                        param_group["lr"] = recipe.lr(progress)
            loss = recipe.loss(model, batch)
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimizers.values():
                opt.step()
            loss_sum += loss.item()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", refresh=False)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / steps_per_epoch} | recipe.epoch_metrics()
        if validation:
            model.eval()
            record |= recipe.validate(model, train.x[held_out].to(device), train.y[held_out].to(device),
                                      torch.Generator().manual_seed(seed * 100_003 + epoch + 50_000))
            model.train()
            if validation.select != "last" and (best is None or record[validation.select] > best["value"]):
                best = {"epoch": epoch + 1, "value": record[validation.select], "model": _cpu_copy(model.state_dict())}
            bar.write(f"{desc} epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                                                                 if k != "epoch"))
        history.append(record)
        state = {"model": model.state_dict(), "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                 "recipe": recipe.state_dict(), "epoch": epoch + 1, "history": history, "best": best}
        atomic_write(checkpoint, lambda tmp: torch.save(state, tmp))
    bar.close()
    if best is not None:
        model.load_state_dict(best["model"])
        for record in history:
            record["selected"] = float(record["epoch"] == best["epoch"])
    model.eval()
    return history
