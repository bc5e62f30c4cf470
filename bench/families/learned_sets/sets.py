"""A trained perturbation set: its CVAE card and model, the latent statistics of held-out pairs, and
radii eps given as percentiles of them (Wong & Kolter, 2021, section 3 of our notes).

The statistic is the standardised posterior-prior distance r(x, x~) = |(mu_q - mu_p) / sigma_p|_2
on the validation positions that the CVAE recipe kept out of training, over ``stats_passes`` fresh
draws of pairs (5 for random perturbations, as in the paper). The distances are cached per card hash.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import AfterValidator
from tqdm.auto import tqdm

from bench.errors import BenchError, CardError
from bench.families.learned_sets.cvae import CVAE, TASK
from bench.files import atomic_write
from bench.models.card import ModelCard, load_model_card, model_ref
from bench.tasks import TASKS, Task

EPS_SPEC = re.compile(r"^(p(\d{1,2}(\.\d+)?)|max|mean)$")
EPS_HELP = "a positive number, or a percentile of the set's latent statistics: p50, p75, p99.9, max or mean"


def parse_eps(value: float | str) -> float | str:
    """A radius: a positive number, or the name of a statistic resolved per perturbation set."""
    if isinstance(value, str) and EPS_SPEC.match(value.strip()):
        return value.strip()
    if isinstance(value, str):  # a number typed on the command line
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 and np.isfinite(value):
        return float(value)
    raise ValueError(f"eps {value!r} is not {EPS_HELP}")


Radius = Annotated[float | str, AfterValidator(parse_eps)]  # for card schemas
CVAERef = model_ref(TASK)  # a reference to a CVAE card, by id or by a path relative to the referring card


def radius_option(value: float | str) -> float | str:
    """``parse_eps`` for a value typed by a user, failing with a BenchError that says how to write one."""
    try:
        return parse_eps(value)
    except ValueError as err:
        raise BenchError(str(err), "pass e.g. --eps max or --eps 2.5") from None


def cvae_card(ref: str | Path, where: str) -> ModelCard:
    card = load_model_card(ref)
    if card.task != TASK:
        raise CardError(f"{where}: {card.id} is a {card.task} card, not a perturbation set",
                        f"name a CVAE card (task: {TASK}), e.g. mnist-rts-cvae")
    return card


def load_cvae(card: ModelCard, device: str | torch.device = "cpu") -> CVAE:
    """The card's CVAE in eval mode with frozen weights (trained beforehand: ``ensure_trained``)."""
    from bench.models.build import create

    model = create(card, device=device)
    model.requires_grad_(False)
    return model


@dataclass(frozen=True)
class LatentStats:
    distances: np.ndarray  # r of every held-out pair

    def resolve(self, eps: float | str) -> float:
        if not isinstance(eps, str):
            return float(eps)
        if eps == "max":
            return float(self.distances.max())
        if eps == "mean":
            return float(self.distances.mean())
        return float(np.percentile(self.distances, float(eps[1:])))

    def summary(self) -> dict[str, float]:
        d = self.distances
        out = {"n": float(len(d)), "mean": float(d.mean()), "std": float(d.std())}
        out |= {f"p{q:g}": float(np.percentile(d, q)) for q in (25, 50, 75, 99.9)}
        return out | {"max": float(d.max())}


def resolve_radius(card: ModelCard, eps: float | str, *, device: str | torch.device = "cpu") -> float:
    """A radius as a number: itself, or the named statistic of the set (computed once and cached)."""
    return float(eps) if not isinstance(eps, str) else latent_stats(card, device=device).resolve(eps)


def _stats_path(card: ModelCard) -> Path:
    from bench.files import safe_filename
    from bench.files import cache_dir

    return cache_dir("perturbation-stats") / f"{safe_filename(card.id)}-{card.hash[:16]}.json"


def latent_stats(card: ModelCard, *, device: str | torch.device = "cpu", data_root: str | None = None,
                 batch_size: int = 500) -> LatentStats:
    """r on the held-out validation pairs of the card's recipe (computed once, then cached)."""
    path = _stats_path(card)
    if path.is_file():
        return LatentStats(np.asarray(json.loads(path.read_text())["distances"], dtype=np.float64))
    from bench.data import load_dataset, subset_indices

    params = card.make_recipe().params
    cvae = load_cvae(card, device)
    train = load_dataset(card.dataset, "train", data_root)
    val = subset_indices(len(train), None)[:params.val_size]
    source = params.pairs.build("train")
    gen = torch.Generator().manual_seed(card.recipe.seed + 10_007)  # not the training draws
    distances = []
    with torch.no_grad():
        for _ in tqdm(range(params.stats_passes), desc=f"latent stats {card.id}", unit="pass", dynamic_ncols=True):
            for i in range(0, len(val), batch_size):
                idx = val[i:i + batch_size]
                x = train.x[idx].to(device)
                distances.append(cvae.standardized_distance(x, source(x, idx, gen)).cpu())
    r = torch.cat(distances).double().numpy()
    text = json.dumps({"card": card.id, "card_hash": card.hash, "passes": params.stats_passes,
                       "distances": r.tolist()})
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return LatentStats(r)




class PerturbationSet(Task):
    """A learned perturbation set (a CVAE card): its runs measure the set itself, e.g. set quality."""

    name = TASK
    description = "a learned perturbation set (CVAE): set quality, and the sets classifiers are attacked in"
    uses_labels = False

    @torch.no_grad()
    def probe(self, model: CVAE, x: torch.Tensor) -> torch.Tensor:
        mu_p, _ = model.prior(x)
        return model.perturb(x, torch.zeros_like(mu_p))  # the prior-mean member of each set

    def trained_summary(self, card: ModelCard, model: CVAE, device: torch.device) -> dict[str, float]:
        """The latent distance statistics of held-out pairs, from which eps percentiles are read."""
        return latent_stats(card, device=device).summary()


TASKS.register(TASK, PerturbationSet())
