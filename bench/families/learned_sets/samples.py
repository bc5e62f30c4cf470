"""A picture of a learned perturbation set, to see what an attacker may pick from.

For the first ``n`` points of the evaluation subset, one row each of: the image x, one real
perturbation of the set's training family, the prior mean g(x, mu_p) (u = 0), then ``draws`` prior
samples u ~ N(0, I) projected radially onto the eps-ball. A set whose samples stop looking like
real perturbations (blurred, painted strokes, lost identity) shows it here at a glance.
"""
from __future__ import annotations

from pathlib import Path

import torch

from bench.errors import BenchError, require
from bench.files import atomic_write

FORMATS = (".png", ".jpg", ".jpeg")


def sample_grid(cvae: str | Path, out: str | Path, *, n: int = 8, draws: int = 4, eps: float | str = "max",
                seed: int = 0, device: str | None = "auto") -> Path:
    from bench.data import load_dataset, subset_indices
    from bench.families.learned_sets.sets import cvae_card, load_cvae, radius_option, resolve_radius
    from bench.ops.norms import project_l2
    from bench.devices import resolve_device
    from bench.training import ensure_trained

    save_image = require("torchvision.utils", "bench perturbation samples", "pip install 'bench[vision]'").save_image

    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise BenchError(f"cannot write an image to {out}", f"name a {', '.join(FORMATS)} file")
    if n < 1 or draws < 0:
        raise BenchError(f"need n >= 1 and draws >= 0, got n={n}, draws={draws}", "pass e.g. --n 8 --draws 4")
    eps = radius_option(eps)
    dev = resolve_device(device)
    card = cvae_card(cvae, "bench perturbation samples")
    ensure_trained(card, device=dev)
    model = load_cvae(card, dev)
    radius = resolve_radius(card, eps, device=dev)
    data = load_dataset(card.dataset, "test")
    index = subset_indices(len(data), n)
    x = data.x[index].to(dev)
    gen = torch.Generator().manual_seed(seed)
    real = card.make_recipe().params.pairs.build("test")(x, index, gen)
    with torch.no_grad():
        mu_p, _ = model.prior(x)
        rows = [x, real, model.perturb(x, torch.zeros_like(mu_p))]
        rows += [model.perturb(x, project_l2(torch.randn(mu_p.shape, generator=gen).to(mu_p), radius))
                 for _ in range(draws)]
    out.parent.mkdir(parents=True, exist_ok=True)
    grid = torch.cat(rows).cpu()
    atomic_write(out, lambda tmp: save_image(grid, tmp, format=out.suffix.lstrip(".") or "png", nrow=len(index),
                                             pad_value=0.5))
    return out
