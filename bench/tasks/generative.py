"""The ``generative`` task: a VAE-like model of images, evaluated without labels.

The contract is two methods: ``reconstruct(x)`` (a deterministic reconstruction, e.g. decode(mu(x)))
and ``elbo(x)`` (the evidence lower bound per image, in nats). The clean pass reports both; threat
families for generative models report damage to them, never an accuracy. Both, and every threat family, read the
model through ``Checked``, which refuses a NaN or a misshapen output wherever it appears (an attack's iterate
included) instead of letting it count as "no damage"; ``check_elbo_order`` refuses certified, attacked and clean
ELBOs out of order.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bench.errors import BenchError
from bench.metrics import Metric
from bench.tasks import TASKS, Task


def per_pixel_mse(a: Tensor, b: Tensor) -> Tensor:
    return ((a - b) ** 2).flatten(1).mean(1)


class Checked:
    """A generative model as the clean pass and threat families see it: every method's output is checked before
    it is used (finite; reconstructions shaped like the input; one ELBO and one encoding row per image), so a NaN
    at an attack's iterate ends the run instead of counting as "no damage". Submodules, buffers and constants pass
    through as the model has them."""

    def __init__(self, model: nn.Module, name: str):
        self._model, self._name = model, name

    def __getattr__(self, attr: str):
        if attr.startswith("_"):  # the proxy's own (a copy looks them up before they exist)
            raise AttributeError(attr)
        value = getattr(self._model, attr)
        if isinstance(value, nn.Module) or not callable(value):
            return value
        return lambda *args, **kwargs: _checked_output(self._name, attr, value(*args, **kwargs), args)


SHAPES = {  # method: (what it must return, test of its output against its input x)
    "reconstruct": ("a tensor shaped like its input", lambda out, x: isinstance(out, Tensor) and out.shape == x.shape),
    "elbo": ("one value per image", lambda out, x: isinstance(out, Tensor) and out.shape == x.shape[:1]),
    "encode": ("(mu, logvar) with one row per image each", lambda out, x: isinstance(out, (tuple, list))
               and len(out) == 2 and all(isinstance(t, Tensor) and t.shape[:1] == x.shape[:1] for t in out)),
}


def _describe(out) -> str:
    if isinstance(out, Tensor):
        return f"shape {tuple(out.shape)}"
    return f"a {type(out).__name__} of {len(out)}" if isinstance(out, (tuple, list)) else type(out).__name__


def _numbers(out) -> list:
    """The tensors and floats in an output (nested in tuples, lists and dicts)."""
    if isinstance(out, (Tensor, float)):
        return [out]
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else ()
    return [number for item in items for number in _numbers(item)]


def _checked_output(name: str, method: str, out, args: tuple):
    x = args[0] if args and isinstance(args[0], Tensor) else None
    if method in SHAPES and x is not None and not SHAPES[method][1](out, x):
        raise BenchError(f"the generative model {name}: {method}() returned {_describe(out)} for inputs of shape "
                         f"{tuple(x.shape)}; it must return {SHAPES[method][0]}",
                         f"make the model's {method}() follow the contract in bench.tasks.generative")
    for value in _numbers(out):
        finite = torch.isfinite(value) if isinstance(value, Tensor) else torch.tensor(math.isfinite(value))
        if not finite.all():
            rows = f" for {int((~finite).reshape(len(x), -1).any(1).sum())} of {len(x)} inputs" \
                if x is not None and finite.ndim and len(finite) == len(x) else ""
            raise BenchError(f"the generative model {name} returned non-finite values (NaN or inf) from "
                             f"{method}(){rows}; a NaN cannot be scored",
                             "check the weights and the model's methods (e.g. inputs off the data grid, a division "
                             "by zero)")
    return out


def checked(model: nn.Module | Checked, name: str | None = None) -> Checked:
    """The model with every output checked (itself if it already is)."""
    return model if isinstance(model, Checked) else Checked(model, name or type(model).__name__)


def model_name(model: nn.Module | Checked) -> str:
    """What errors call the model: its card id or run name once the run wrapped it, else its class."""
    return checked(model)._name


def require(model: nn.Module | Checked, method: str) -> None:
    if not callable(getattr(model, method, None)):
        raise BenchError(f"{model_name(model)} has no {method}(x) method",
                         "a generative model needs reconstruct(x) and elbo(x) (see bench.tasks.generative)")


def reconstruct(model: nn.Module | Checked, x: Tensor) -> Tensor:
    require(model, "reconstruct")
    return checked(model).reconstruct(x)


def check_elbo_order(name: str, clean: Tensor, attacked: Tensor, certified: Tensor | None = None) -> None:
    """Refuse ELBOs out of order: an attack (the clean point among its candidates) never raises the ELBO and a
    certified bound is below both; anything else is a bug or a model whose elbo() is not what its layers compute."""
    chain = {"certified": certified, "attacked": attacked, "clean": clean}
    chain = {k: v for k, v in chain.items() if v is not None}
    values = list(chain.values())
    tol = 1e-3 + 1e-4 * clean.abs()
    bad = torch.zeros_like(clean, dtype=torch.bool)
    for low, high in zip(values, values[1:]):
        bad |= ~(low <= high + tol)  # NaN is out of order too
    if bad.any():
        first = int(bad.nonzero()[0])
        shown = ", ".join(f"{k} {float(v[first]):.6g}" for k, v in chain.items())
        raise BenchError(f"{name}: its ELBOs are out of order ({' <= '.join(chain)}) on {int(bad.sum())} of "
                         f"{len(bad)} points; first: {shown}",
                         "check that the model's elbo() is what its layers compute (a certificate bounds the "
                         "layers); with a stock architecture this is a bug in bench: report it")


class Generative(Task):
    name = "generative"
    description = "a VAE: reconstructions and the ELBO, no labels"
    uses_labels = False
    clean_metrics = (Metric("clean_elbo", "clean_elbo", "clean ELBO (nats)", higher_is_better=True),
                     Metric("clean_recon", "clean_recon", "clean reconstruction error (per-pixel MSE)",
                            higher_is_better=False))

    def guarded(self, model: nn.Module, name: str) -> Checked:
        return checked(model, name)

    @torch.no_grad()
    def probe(self, model: nn.Module, x: Tensor) -> Tensor:
        return reconstruct(model, x)

    @torch.no_grad()
    def clean_pass(self, model: nn.Module, x: Tensor, y: Tensor, num_classes: int | None) -> dict[str, Tensor]:
        require(model, "elbo")
        return {"clean_elbo": checked(model).elbo(x), "clean_recon": per_pixel_mse(reconstruct(model, x), x)}

    def trained_summary(self, card, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Clean ELBO and reconstruction error on 1,000 test images (the first of the fixed subset)."""
        from bench.data import load_dataset, subset_indices
        test = load_dataset(card.dataset, "test")
        x = test.x[subset_indices(len(test), min(1000, len(test)))].to(device)
        with torch.no_grad():
            clean = self.clean_pass(model, x, None, None)
        return {"clean_elbo": float(clean["clean_elbo"].mean()), "clean_recon": float(clean["clean_recon"].mean())}


TASKS.register("generative", Generative())
