"""The ``classifier`` task: a model maps images in [0, 1] to logits over the dataset's classes.

Every forward pass the suite scores goes through ``logits``, which refuses what would otherwise be
scored silently: a tuple or 1-D output, the wrong number of classes, or non-finite values (the
argmax of NaN logits is class 0, which would rank a broken model at chance level).
"""
from __future__ import annotations


import torch
from torch import Tensor, nn

from bench.errors import BenchError
from bench.metrics import Metric
from bench.tasks import TASKS, Task

CLEAN_ACC = Metric("clean_acc", "clean_correct", "clean accuracy", agg="rate")


def logits(model: nn.Module, x: Tensor, num_classes: int | None = None) -> Tensor:
    """The model's logits on x, checked: a (batch, classes) tensor of finite values."""
    out = model(x)
    if not isinstance(out, Tensor):
        raise BenchError(f"the model returned {type(out).__name__}, not a tensor of logits",
                         "make forward() return only the logits, shape (batch, classes)")
    if out.ndim != 2 or out.shape[0] != len(x):
        raise BenchError(f"the model returned shape {tuple(out.shape)} for a batch of {len(x)} images",
                         "a classifier must return logits of shape (batch, classes)")
    if num_classes is not None and out.shape[1] != num_classes:
        raise BenchError(f"the model returned {out.shape[1]} logits per image, but the dataset has {num_classes} "
                         "classes", "evaluate it on the dataset it was trained for (--dataset) or fix its last layer")
    if not torch.isfinite(out).all():
        raise BenchError("the model returned non-finite logits (NaN or inf); they cannot be scored",
                         "check the weights and the model's forward pass (e.g. a division by zero)")
    return out


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, num_classes: int | None = None) -> Tensor:
    return logits(model, x, num_classes).argmax(1)


class Classifier(Task):
    name = "classifier"
    description = "logits over classes; accuracy clean and under threats"
    clean_metrics = (CLEAN_ACC,)

    @torch.no_grad()
    def clean_pass(self, model: nn.Module, x: Tensor, y: Tensor, num_classes: int | None) -> dict[str, Tensor]:
        out = logits(model, x, num_classes)
        if len(y) and int(y.max()) >= out.shape[1]:
            raise BenchError(f"labels go up to {int(y.max())} but the model has {out.shape[1]} outputs",
                             "evaluate it on the data it was trained for, with labels 0 .. classes - 1")
        pred = out.argmax(1)
        return {"clean_pred": pred, "clean_correct": pred == y}

    @torch.no_grad()
    def probe(self, model: nn.Module, x: Tensor) -> Tensor:
        return logits(model, x)

    def trained_summary(self, card, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Clean accuracy on the whole test split; for recipes that attack during training, also PGD-40
        accuracy at the recipe's eps on the first 1,000 points of the evaluation subset."""
        from bench.data import load_dataset, subset_indices
        from bench.ops.pgd import pgd

        test = load_dataset(card.dataset, "test")
        correct = sum(int((predict(model, test.x[i:i + 1000].to(device)) == test.y[i:i + 1000].to(device)).sum())
                      for i in range(0, len(test), 1000))
        out = {"clean_acc": correct / len(test)}
        attack = card.make_recipe().attack if card.recipe else None
        if attack is not None:
            idx = subset_indices(len(test), min(1000, len(test)))
            x, y = test.x[idx].to(device), test.y[idx].to(device)
            x_adv = pgd(model, x, y, norm=attack.norm, eps=attack.eps, steps=40, step_size=2.5 * attack.eps / 40,
                        gen=torch.Generator().manual_seed(0))
            out["pgd40_acc"] = float((predict(model, x_adv) == y).float().mean())
        return out


TASKS.register("classifier", Classifier())
