"""Generative models under hostile outputs (issue 18, defect 2): every registered generative family, run on a VAE
that returns NaN (off the data grid, always, or in its Lipschitz constants) or reconstructions of the wrong shape,
ends in a clear error and never in a number computed past a NaN; a certified ELBO above the model's own ELBO is
refused with the model, the point count and the values."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from catalogue import FAMILY_CARDS

import bench
from bench.errors import BenchError
from bench.threats import THREAT_FAMILIES, ThreatCard

MODELS = Path(__file__).resolve().parents[1] / "fingerprints" / "models"  # tiny VAEs with committed weights
MODEL_OF = {"vae-lipschitz-margin": "digits-lipschitz-vae"}  # families that need a VAE of their own kind
GENERATIVE = sorted(f for f in THREAT_FAMILIES.names() if "generative" in THREAT_FAMILIES.get(f).tasks)
NAN = float("nan")


def _off_grid(x: torch.Tensor) -> torch.Tensor:
    """Per image: is any pixel off the digits' grid (multiples of 1/16), as every perturbation makes it?"""
    return (x * 16 - torch.round(x * 16)).abs().flatten(1).amax(1) > 1e-4


class Hostile:
    """Mixed into a VAE's class; ``nans`` counts the calls that returned a NaN, so a test knows whether the family
    saw one."""

    nans = 0

    def _counted(self, value: torch.Tensor) -> torch.Tensor:
        self.nans += int(value.isnan().any())
        return value


class NaNOffTheGrid(Hostile):
    """Finite on the clean digits, NaN in the encoding (so in reconstructions and the ELBO) anywhere else."""

    def encode(self, x):
        mu, logvar = super().encode(x)
        return self._counted(torch.where(_off_grid(x).view(-1, 1), NAN, mu)), logvar


class NaNAlways(Hostile):
    def encode(self, x):
        mu, logvar = super().encode(x)
        return self._counted(mu * NAN), logvar


class NaNConstants(Hostile):
    """Healthy outputs, NaN Lipschitz constants (a certificate would read them as "no margin")."""

    def lipschitz_constants(self):
        self.nans += 1
        return {"a": NAN, "b": 1.0, "c": 1.0}


class FlatReconstruction(Hostile):
    """Reconstructions of shape (N, 64, 1, 1), which broadcast against (N, 1, 8, 8) images instead of failing."""

    def reconstruct(self, x):
        return super().reconstruct(x).flatten(1)[:, :, None, None]


class LyingELBO(Hostile):
    """elbo() 1000 nats below what the model's layers compute, so the certified ELBO (from the layers) is above it."""

    def elbo(self, x, noise=None):
        return super().elbo(x, noise) - 1000.0


NAN_MODELS = {"nan-off-the-grid": NaNOffTheGrid, "nan-always": NaNAlways, "nan-constants": NaNConstants}


@pytest.fixture(scope="module")
def vaes() -> dict[str, torch.nn.Module]:
    return {name: bench.load_model(str(MODELS / f"{name}.yaml")) for name in ("digits-vae", "digits-lipschitz-vae")}


def hostile(vaes: dict[str, torch.nn.Module], family: str, mixin: type) -> torch.nn.Module:
    vae = copy.deepcopy(vaes[MODEL_OF.get(family, "digits-vae")])
    vae.__class__ = type(mixin.__name__, (mixin, type(vae)), {})
    return vae


def run(model: torch.nn.Module, family: str, tmp_path: Path):
    card = ThreatCard(id=f"hostile-{family}", family=family, params=FAMILY_CARDS[family])
    return bench.evaluate(model, card, dataset="digits", task="generative", model_name="hostile-vae", n=20,
                          results=tmp_path, progress=False)


def test_the_generative_families_are_found():
    assert {"vae-attack", "vae-margin", "vae-certified-elbo", "vae-lipschitz-margin"} <= set(GENERATIVE)


@pytest.mark.parametrize("family", GENERATIVE)
@pytest.mark.parametrize("kind", sorted(NAN_MODELS))
def test_a_nan_from_a_generative_model_ends_in_an_error_never_a_number(vaes, tmp_path, family, kind):
    model = hostile(vaes, family, NAN_MODELS[kind])
    try:
        summary = run(model, family, tmp_path)
    except BenchError as err:
        assert "non-finite values (NaN or inf)" in str(err) and err.fix, err
    else:  # a family that never met the NaN (it only reads clean points) may score the model
        assert model.nans == 0, f"{family} scored {kind} at {summary.headline} after {model.nans} NaN outputs"


@pytest.mark.parametrize("family", GENERATIVE)
def test_a_reconstruction_of_the_wrong_shape_is_refused(vaes, tmp_path, family):
    with pytest.raises(BenchError, match=r"reconstruct\(\) returned shape \(\d+, 64, 1, 1\) for inputs of shape "
                                         r"\(\d+, 1, 8, 8\)"):
        run(hostile(vaes, family, FlatReconstruction), family, tmp_path)


def test_a_certified_elbo_above_the_models_own_elbo_is_refused(vaes, tmp_path):
    with pytest.raises(BenchError, match=r"hostile-vae: its ELBOs are out of order \(certified <= attacked <= "
                                         r"clean\) on 20 of 20 points; first: certified -\d"):
        run(hostile(vaes, "vae-certified-elbo", LyingELBO), "vae-certified-elbo", tmp_path)


def test_the_elbo_order_allows_float_noise_and_names_what_breaks_it():
    from bench.tasks.generative import check_elbo_order

    clean = torch.tensor([-40.0, -35.0])
    check_elbo_order("m", clean, clean - 1e-5, clean + 1e-4)  # eps 0: a certificate equal to the ELBO
    with pytest.raises(BenchError, match=r"m: .* on 1 of 2 points; first: certified -34\.5, attacked -35, clean -35"):
        check_elbo_order("m", clean, clean, clean + torch.tensor([0.0, 0.5]))
    with pytest.raises(BenchError, match="on 1 of 2 points"):
        check_elbo_order("m", clean, clean + torch.tensor([NAN, 0.0]))
