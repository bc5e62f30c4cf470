"""Interval bounds and the certified ELBO: bounds contain sampled activations (computed in float64) and the exact
value where float sums cancel, certified <= attacked <= clean, certified equals clean at eps 0 and falls as eps
grows, for both decoders and both bounds, and CROWN's certificate is above IBP's on every point."""
from __future__ import annotations

import copy
from fractions import Fraction

import pytest
import torch
import yaml

import bench
from bench.data import load_dataset
from bench.errors import CardError
from bench.families.vae_robustness.attacks import maximise
from bench.families.vae_robustness.certified import certified_elbo, kl_upper
from bench.families.vae_robustness.ibp import interval
from bench.families.vae_robustness.vae import ConvVAE, gaussian_kl
from bench.store import Store
from bench.testing import threat_card
from tiny_vae import TINY, write_card



@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_dataset("digits", "test").x[:16]


def _vae(likelihood: str = "bernoulli", channels: int = 1) -> ConvVAE:
    torch.manual_seed(0)
    return ConvVAE(channels=channels, side=8, latent=4, width=8, likelihood=likelihood, samples=4).eval()


def _inside_ball(x: torch.Tensor, eps: float, gen: torch.Generator) -> torch.Tensor:
    return (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * eps).clamp(0, 1)


def test_interval_bounds_contain_every_layers_float64_activations(digits):
    """Each layer's float32 bounds from the previous layer's contain that layer's float64 activations of inputs
    in the box, and its float64 bounds (computed from the same float32 inputs)."""
    vae, gen = _vae(), torch.Generator().manual_seed(0)
    exact = copy.deepcopy(vae).double()
    lower, upper = (digits - 0.1).clamp(0, 1), (digits + 0.1).clamp(0, 1)
    samples = [_inside_ball(digits, 0.1, gen).double() for _ in range(20)] + [lower.double(), upper.double()]
    for layer, layer64 in zip([*vae.encoder, vae.heads], [*exact.encoder, exact.heads]):
        new_lower, new_upper = interval(layer, lower, upper)
        wide_lower, wide_upper = interval(layer64, lower.double(), upper.double())
        assert new_lower.dtype == torch.float32
        assert (new_lower.double() <= wide_lower).all() and (new_upper.double() >= wide_upper).all(), layer
        with torch.no_grad():
            samples = [layer64(s) for s in samples]
        for s in samples:
            assert (s >= new_lower.double()).all() and (s <= new_upper.double()).all(), layer
        lower, upper = new_lower, new_upper
    z_l, z_u = torch.full((4, 4), -1.0), torch.full((4, 4), 1.0)
    out_l, out_u = interval(vae.decoder, z_l, z_u)
    with torch.no_grad():
        for _ in range(20):
            out = exact.decoder(torch.rand(4, 4, generator=gen, dtype=torch.float64) * 2 - 1)
            assert (out >= out_l.double()).all() and (out <= out_u.double()).all()


@pytest.mark.parametrize("dtype, big", [(torch.float32, 1e8), (torch.float64, 1e17)])
def test_interval_bounds_hold_where_the_sum_cancels(dtype, big):
    """big + 1 - big is 0 in the input's precision and 1 exactly: a slack relative to the output (about 0)
    misses it, a bound on the rounding of |W| |x| does not."""
    layer = torch.nn.Linear(3, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 1.0, -1.0]]))
        layer.bias.zero_()
    x = torch.tensor([[big, 1.0, big]], dtype=dtype)
    exact = sum(Fraction(float(w)) * Fraction(float(v)) for w, v in zip(layer.weight[0].tolist(), x[0].tolist()))
    with torch.no_grad():
        lower, upper = interval(layer, x, x)
    assert exact == 1 and Fraction(float(lower)) <= exact <= Fraction(float(upper))
    assert float(upper - lower) < 1e-6 * big  # still a bound of the magnitude's rounding, not a vacuous one


def test_the_kl_bound_is_above_the_kl_of_every_point_of_the_box():
    gen = torch.Generator().manual_seed(0)
    mu_l, v_l = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    mu_u, v_u = mu_l + 0.5, v_l + 0.5
    bound = kl_upper(mu_l, mu_u, v_l, v_u)
    for _ in range(50):
        t = torch.rand(2, 5, 3, generator=gen)
        assert (gaussian_kl(mu_l + 0.5 * t[0], v_l + 0.5 * t[1]) <= bound + 1e-6).all()


@pytest.mark.parametrize("bound", ["ibp", "crown"])
@pytest.mark.parametrize("likelihood, channels", [("bernoulli", 1), ("gaussian", 3)])
def test_the_certified_elbo_is_below_the_elbo_everywhere_in_the_ball_and_exact_at_zero(digits, likelihood, channels,
                                                                                         bound):
    vae, gen = _vae(likelihood, channels), torch.Generator().manual_seed(1)
    x = digits.repeat(1, channels, 1, 1)
    with torch.no_grad():
        clean = vae.elbo(x)
        torch.testing.assert_close(certified_elbo(vae, x, 0.0, bound), clean, rtol=1e-4, atol=1e-3)
        previous = clean
        for eps in (0.01, 0.03, 0.1):
            certified = certified_elbo(vae, x, eps, bound)
            assert (certified <= previous + 1e-3).all()  # falls as the ball grows
            for _ in range(100):
                assert (certified <= vae.elbo(_inside_ball(x, eps, gen)) + 1e-3).all()
            previous = certified


@pytest.mark.parametrize("trained", [False, True])
def test_crown_is_above_ibp_and_below_a_pgd_attack_on_every_point(digits, tmp_path, trained):
    """On the random tiny VAE and a trained one: IBP <= CROWN <= the lowest ELBO found (PGD, three random starts,
    and the box's two extreme corners) on each of 16 points, at three radii; CROWN strictly above IBP somewhere."""
    vae = _vae() if not trained else bench.load_model(write_card(tmp_path)).eval()
    for eps in (0.01, 0.05, 0.2):
        radius = torch.full((len(digits),), eps)
        attacked = maximise(lambda x: -vae.elbo(x), digits, norm="Linf", radius=radius, step_size=radius / 8,
                            steps=30, restarts=3, gen=torch.Generator().manual_seed(0), include_clean=True)
        with torch.no_grad():
            ibp, crown = certified_elbo(vae, digits, eps, "ibp"), certified_elbo(vae, digits, eps, "crown")
            worst = torch.minimum(vae.elbo(attacked), vae.elbo((digits - eps).clamp(0, 1)))
            worst = torch.minimum(worst, vae.elbo((digits + eps).clamp(0, 1)))
        assert (ibp <= crown).all() and (crown <= worst + 1e-4).all(), eps
        assert (crown > ibp).any()


def test_the_family_orders_certified_attacked_and_clean_elbo(tmp_path):
    path = tmp_path / "tiny-vae.yaml"
    path.write_text(yaml.safe_dump(TINY))
    certified = {}
    for bound in ("ibp", "crown"):
        card = threat_card("vae-certified-elbo", card_id=f"certified-{bound}", eps=0.05, steps=10, bound=bound)
        summary = bench.evaluate(str(path), card, n=30, results=tmp_path, progress=False)
        rows = Store(tmp_path).read_run(summary.run_id).rows
        assert (rows["certified_elbo"] <= rows["adv_elbo"] + 1e-3).all()
        assert (rows["adv_elbo"] <= rows["clean_elbo"] + 1e-4).all()
        assert (rows["certificate_gap"] >= -1e-3).all() and summary.headline == "certified_elbo"
        certified[bound] = rows["certified_elbo"].to_numpy()
    assert (certified["crown"] >= certified["ibp"]).all()
    at_zero = bench.evaluate(str(path), threat_card("vae-certified-elbo", eps=0.0), n=30, results=tmp_path,
                             progress=False)
    assert at_zero.certified_elbo == pytest.approx(at_zero.clean_elbo, rel=1e-4)
    with pytest.raises(CardError, match="field 'bound': Input should be 'ibp' or 'crown'"):
        bench.evaluate(str(path), threat_card("vae-certified-elbo", eps=0.1, bound="lp"), n=2, results=tmp_path,
                       progress=False)


def test_provae_keeps_its_certified_elbo_where_a_standard_vaes_collapses(tmp_path):
    """The proVAE claim in miniature (8x8 digits, 5 epochs, seed 0), with the paper's interval bounds: at eps 0.1
    the standard VAE's certified ELBO is several times its clean one, proVAE's stays near its own clean ELBO,
    which is barely worse."""
    x = load_dataset("digits", "test").x[:200]
    models = {}
    for name, extra in (("plain", {}), ("provae", {"objective": "provae", "eps": 0.1})):
        data = {**TINY, "id": f"tiny-{name}", "recipe": {**TINY["recipe"], "params": {
            **TINY["recipe"]["params"], "epochs": 5, **extra}}}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        models[name] = bench.load_model(str(path))
    with torch.no_grad():
        clean = {k: float(m.elbo(x).mean()) for k, m in models.items()}
        certified = {k: float(certified_elbo(m, x, 0.1, "ibp").mean()) for k, m in models.items()}
    assert certified["plain"] < 3 * clean["plain"]  # ELBOs are negative: "vacuous" = far below
    assert certified["provae"] > 1.5 * clean["provae"]
    assert clean["provae"] > clean["plain"] - 5
