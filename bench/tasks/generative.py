"""The ``generative`` task: a VAE-like model of images, evaluated without labels.

The contract is two methods: ``reconstruct(x)`` (a deterministic reconstruction, e.g. decode(mu(x)))
and ``elbo(x)`` (the evidence lower bound per image, in nats). The clean pass reports both; threat
families for generative models report damage to them, never an accuracy.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.errors import BenchError
from bench.metrics import Metric
from bench.tasks import TASKS, Task


def per_pixel_mse(a: Tensor, b: Tensor) -> Tensor:
    return ((a - b) ** 2).flatten(1).mean(1)


def checked(values: Tensor, what: str, batch: int) -> Tensor:
    if not isinstance(values, Tensor) or values.shape[:1] != (batch,) or not torch.isfinite(values).all():
        raise BenchError(f"the generative model's {what} is not a finite tensor with one entry per image",
                         f"check the model's {what.split()[0]}() method")
    return values


def reconstruct(model: nn.Module, x: Tensor) -> Tensor:
    if not callable(getattr(model, "reconstruct", None)):
        raise BenchError(f"{type(model).__name__} has no reconstruct(x) method",
                         "a generative model needs reconstruct(x) and elbo(x) (see bench.tasks.generative)")
    return checked(model.reconstruct(x), "reconstruct output", len(x))


class Generative(Task):
    name = "generative"
    description = "a VAE: reconstructions and the ELBO, no labels"
    uses_labels = False
    clean_metrics = (Metric("clean_elbo", "clean_elbo", "clean ELBO (nats)", higher_is_better=True),
                     Metric("clean_recon", "clean_recon", "clean reconstruction error (per-pixel MSE)",
                            higher_is_better=False))

    @torch.no_grad()
    def probe(self, model: nn.Module, x: Tensor) -> Tensor:
        return reconstruct(model, x)

    @torch.no_grad()
    def clean_pass(self, model: nn.Module, x: Tensor, y: Tensor, num_classes: int | None) -> dict[str, Tensor]:
        if not callable(getattr(model, "elbo", None)):
            raise BenchError(f"{type(model).__name__} has no elbo(x) method",
                             "a generative model needs reconstruct(x) and elbo(x) (see bench.tasks.generative)")
        return {"clean_elbo": checked(model.elbo(x), "elbo output", len(x)),
                "clean_recon": per_pixel_mse(reconstruct(model, x), x)}


    def trained_summary(self, card, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Clean ELBO and reconstruction error on 1,000 test images (the first of the fixed subset)."""
        from bench.data import load_dataset, subset_indices
        test = load_dataset(card.dataset, "test")
        x = test.x[subset_indices(len(test), min(1000, len(test)))].to(device)
        with torch.no_grad():
            clean = self.clean_pass(model, x, None, None)
        return {"clean_elbo": float(clean["clean_elbo"].mean()), "clean_recon": float(clean["clean_recon"].mean())}


TASKS.register("generative", Generative())
