"""bench's IBP and CROWN against auto_LiRPA 0.7.1's, an independent implementation, on a tiny conv-vae with fixed
weights (fixture recorded by ``lirpa_reference.py``; auto_LiRPA itself is not needed here).

auto_LiRPA computes in float32, so its bounds carry rounding errors of order 1e-7 of the layer's scale either
way; ours are sound in exact arithmetic. Agreement is therefore asserted to ``TOL`` of the layer's scale:

- IBP: equal at every affine layer (ours contain theirs up to their rounding);
- CROWN: ours are tighter than auto_LiRPA's default CROWN, whose intermediate bounds are CROWN only where IBP
  finds a neuron unstable (IBP elsewhere) and are not capped by IBP; ours are CROWN capped by IBP everywhere.
  Not on every output: tighter intermediate bounds can flip the adaptive lower slope of a ReLU, which helps
  some outputs and hurts others, so only the summed width is compared there.
  With ``compare_crown_with_ibp`` (recorded as "CROWN-IBP-min") auto_LiRPA caps them too (by IBP from the
  layer below), and then the two agree on every neuron IBP finds unstable and on every output (capped by that
  IBP, which auto_LiRPA's final comparison misses on a few outputs): the same relaxations (chord above,
  adaptive slope below) give the same bounds. Where IBP finds a neuron stable, ours are tighter and its
  relaxation is exact either way.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.families.vae_robustness.crown import Bounded
from bench.families.vae_robustness.ibp import interval, propagate
from bench.families.vae_robustness.vae import ConvVAE

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lirpa_reference.npz"
TOL = 1e-6  # of the layer's largest bound: auto_LiRPA's float32 rounding measured up to 2e-7
AFFINE = {"encoder": (0, 2, 5), "decoder": (0, 3, 5)}


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return dict(data)


def _cases() -> list[str]:
    with np.load(FIXTURE) as data:
        return sorted({k.rsplit("/", 1)[0] for k in data.files if k.count("/") == 2 and not k.startswith("weights")})


def _network(reference: dict, part: str) -> nn.Module:
    vae = ConvVAE(channels=1, side=28, latent=4, width=2)
    vae.load_state_dict({k[len("weights/"):]: torch.from_numpy(v) for k, v in reference.items()
                         if k.startswith("weights/")})
    return nn.Sequential(vae.encoder, vae.heads) if part == "encoder" else vae.decoder


def _theirs(reference: dict, case: str, method: str, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(torch.from_numpy(reference[f"{case}/{method}/{layer}/{side}"]).double() for side in ("lower", "upper"))


def test_the_fixture_is_auto_lirpa_0_7_1(reference):
    assert str(reference["auto_lirpa_version"]) == "0.7.1" and len(str(reference["auto_lirpa_commit"])) == 40
    assert len(_cases()) == 4


@pytest.mark.parametrize("case", _cases())
def test_ibp_equals_auto_lirpa_ibp_at_every_layer(reference, case):
    net = _network(reference, case.split("/")[0])
    lower, upper = (torch.from_numpy(reference[f"{case}/{side}"]) for side in ("lower", "upper"))
    for index, layer in enumerate(net if case.startswith("decoder") else [*net[0], net[1]]):
        lower, upper = interval(layer, lower, upper)
        if index in AFFINE[case.split("/")[0]]:
            their_lower, their_upper = _theirs(reference, case, "IBP", index)
            tol = TOL * float(torch.maximum(their_lower.abs(), their_upper.abs()).max())
            assert (lower.double() <= their_lower + tol).all() and (upper.double() >= their_upper - tol).all()
            torch.testing.assert_close(lower.double(), their_lower, rtol=0, atol=tol)
            torch.testing.assert_close(upper.double(), their_upper, rtol=0, atol=tol)


@pytest.mark.parametrize("case", _cases())
def test_crown_equals_auto_lirpa_crown_capped_by_ibp(reference, case):
    part = case.split("/")[0]
    lower, upper = (torch.from_numpy(reference[f"{case}/{side}"]).double() for side in ("lower", "upper"))
    bounded = Bounded(_network(reference, part), lower, upper)
    tighter = []
    for index in AFFINE[part]:
        ours_lower, ours_upper = bounded.inputs[index + 1]
        default_lower, default_upper = _theirs(reference, case, "CROWN", index)
        their_lower, their_upper = _theirs(reference, case, "CROWN-IBP-min", index)
        tol = TOL * float(torch.maximum(their_lower.abs(), their_upper.abs()).max())
        if index != AFFINE[part][-1]:  # one ReLU below: the same relaxation under tighter bounds
            assert (ours_lower >= default_lower - tol).all() and (ours_upper <= default_upper + tol).all(), index
        assert (ours_lower >= their_lower - tol).all() and (ours_upper <= their_upper + tol).all(), index
        ibp_lower, ibp_upper = propagate(bounded.layers[index], *bounded.inputs[index])  # from the layer below
        if index == AFFINE[part][-1]:  # its output: capped by that IBP too (auto_LiRPA's cap misses some)
            compared = torch.ones_like(ibp_lower, dtype=torch.bool)
            their_lower, their_upper = torch.maximum(their_lower, ibp_lower), torch.minimum(their_upper, ibp_upper)
        else:
            compared = (ibp_lower < 0) & (ibp_upper > 0)
        torch.testing.assert_close(ours_lower[compared], their_lower[compared], rtol=0, atol=tol)
        torch.testing.assert_close(ours_upper[compared], their_upper[compared], rtol=0, atol=tol)
        tighter.append(float((ours_upper - ours_lower).sum() / (default_upper - default_lower).sum()))
    assert tighter[0] == pytest.approx(1, abs=1e-6) and max(tighter[1:]) < 1  # exact at the first, tighter after
