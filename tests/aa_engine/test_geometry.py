"""The engine's projection onto the L1 ball intersected with the box, against the official AutoAttack's."""
from __future__ import annotations

import pytest
import torch

from bench.threats.aa_engine.geometry import norms, project, project_l1

autopgd = pytest.importorskip("pyautoattack.autopgd_base")


@pytest.mark.parametrize("trial", range(12))
def test_l1_projection_equals_the_officials(trial):
    gen = torch.Generator().manual_seed(trial)
    d = 8 + trial * 13  # the official's answer is wrong for a single coordinate (its bisection stops too soon)
    x = torch.rand(40, 1, 1, d, generator=gen, dtype=torch.float64)
    if trial % 3 == 0:
        x = x.round()  # coordinates on the box's faces
    delta = torch.randn(40, 1, 1, d, generator=gen, dtype=torch.float64) * 3 * torch.rand(40, 1, 1, 1, generator=gen,
                                                                                          dtype=torch.float64)
    eps = 0.1 + 4 * trial / 12
    ours = project_l1(x, delta, eps)
    official = delta + autopgd.L1_projection(x, delta, eps).view_as(delta).double()
    # the official computes in float32 (its error reaches about 1e-5 here, where ours matches an exact float64
    # bisection to 1e-14); anything beyond float32 rounding would be a different projection
    assert torch.allclose(ours, official, atol=5e-5)
    assert (norms(ours, "L1") <= eps * (1 + 1e-9)).all()
    assert ((x + ours) >= 0).all() and ((x + ours) <= 1).all()


@pytest.mark.parametrize("norm, eps", [("Linf", 0.1), ("L2", 0.5), ("L1", 2.0)])
def test_every_projection_lands_inside_the_threat_model(norm, eps):
    gen = torch.Generator().manual_seed(1)
    x, delta = torch.rand(64, 3, 8, 8, generator=gen), torch.randn(64, 3, 8, 8, generator=gen)
    out = project(x, delta, norm, eps)
    assert (norms(out, norm) <= eps * (1 + 1e-5)).all()
    assert ((x + out) >= 0).all() and ((x + out) <= 1).all()
    inside = delta * 1e-3
    assert torch.allclose(project(x.clamp(0.1, 0.9), inside, norm, eps), inside, atol=1e-7)
