"""The ``learned-cvae-real-grid`` family: how much of a learned threat is the real one.

The learned ball is larger than the real family: an attack in it finds images that no real rotation,
scale and translation makes (shrunk far below the family's range, or another digit). For a set learned from
RTS pairs the real family can be searched directly: every point of a grid over the pairs' own ranges
(rotation, scale, horizontal and vertical shift) is applied to x, kept when the CVAE encodes the pair
(x, warp(x)) inside the same ball (standardised distance r <= eps), and a point is robust only if every kept
transformation is classified correctly. Beside the learned-set number this says what part of it the real
family explains; ``real_members`` is how many grid transformations each point's ball holds (a point whose
ball holds none is robust by default, so the count is stored and averaged).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from bench.errors import BenchError
from bench.families.learned_sets.pairs import RTS, Pairs, PairSpec, affine_warp, parse_pairs, rts_theta
from bench.families.learned_sets.sets import Radius
from bench.families.learned_sets.threats import CVAEThreatParams, RadiusColumn, keep_first_fooling
from bench.metrics import Metric
from bench.ops.draws import Draws
from bench.params import Samples
from bench.tasks.classifier import predict
from bench.threats.base import ROBUST_ACC, THREAT_FAMILIES, Batch, Target
from bench.threats.step import Candidates


class RealGridParams(CVAEThreatParams):
    eps: Radius
    pairs: Pairs | None = None  # the real family (default: the pairs the CVAE card was learned from)
    rotations: Samples = 9  # grid points over [-rotation, rotation]
    scales: Samples = 5  # over the pairs' scale range
    shifts: Samples = 5  # per axis, over [-translate, translate]
    chunk: Samples = 4000  # warped images per forward pass (memory only)


def rts_family(card, pairs: PairSpec | None) -> RTS:
    """The real RTS family of a set: ``pairs`` where a threat card names them, else the pairs the CVAE card was
    learned from; an error for a set learned from anything else."""
    pairs = pairs or (card.recipe.params if card.recipe else {}).get("pairs")
    spec = parse_pairs(pairs) if pairs is not None else None
    if not isinstance(spec, RTS):
        raise BenchError(f"the real family needs a set learned from rts pairs; {card.id} was learned from "
                         f"{getattr(spec, 'kind', 'no pairs it names')}",
                         "use a CVAE card learned from pairs: {kind: rts, ...}, or name them (pairs: in the "
                         "threat card's params)")
    return spec


def rts_grid(spec: RTS, rotations: int, scales: int, shifts: int) -> Tensor:
    """(G, 4) grid of (angle in radians, scale, shift x, shift y in normalised coordinates) over the ranges."""
    angle = torch.linspace(-spec.rotation, spec.rotation, rotations) * math.pi / 180
    scale = torch.linspace(*spec.scale, scales)
    shift = torch.linspace(-spec.translate, spec.translate, shifts) * 2  # the image spans 2
    return torch.cartesian_prod(angle, scale, shift, shift)


@THREAT_FAMILIES.register("learned-cvae-real-grid")
class RealFamilyGrid(RadiusColumn):
    Params = RealGridParams
    params: RealGridParams
    metrics = (ROBUST_ACC, Metric("real_members", "real_members", "grid transformations inside the ball",
                                  agg="mean"))

    def __init__(self, params: RealGridParams):
        super().__init__(params)
        self.grid = rts_grid(rts_family(self.card, params.pairs), params.rotations, params.scales, params.shifts)

    def attacked(self, batch: Batch) -> Tensor:
        """Every point, so that each has its count of real transformations inside the ball."""
        return torch.ones_like(batch.clean["clean_correct"])

    def perturb(self, target: Target, x: Tensor, y: Tensor, draws: Draws) -> Candidates:
        """The first grid transformation inside the ball that fools each point (the point itself where none
        does), and how many grid transformations each point's ball holds."""
        eps, cvae, n = self.radius(self.params.eps, x.device), self.cvae(x.device), len(x)
        found, pred = x.clone(), y.clone()
        members = torch.zeros(n, dtype=torch.long)
        per_pass = max(1, self.params.chunk // n)
        with torch.no_grad():
            for start in range(0, len(self.grid), per_pass):
                part = self.grid[start:start + per_pass]
                k = len(part)
                theta = rts_theta(*part.T).to(x.device, x.dtype).repeat_interleave(n, 0)
                flat = x.repeat(k, 1, 1, 1)
                images = affine_warp(flat, theta)
                inside = (cvae.standardized_distance(flat, images) <= eps).view(k, n)
                votes = predict(target.module, images, target.num_classes).view(k, n)
                members += inside.sum(0).cpu()
                keep_first_fooling(found, pred, y, images, votes, inside & (votes != y))
        return Candidates(found, pred=pred, columns={"real_members": members.float()})
