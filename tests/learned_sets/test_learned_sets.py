"""Learned perturbation sets (issue 3, first step): CVAE core, pair sources and latent PGD invariants."""
from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from bench.families.learned_sets.latent_pgd import latent_pgd
from bench.ops.norms import project_l2
from bench.data import load_dataset
from bench.families.learned_sets.pairs import linf_noise_pairs, rts_pairs
from bench.families.learned_sets.cvae import LOGVAR_MAX, LOGVAR_MIN, bounded_logvar, kl_normal, small_cvae


@pytest.fixture(scope="module")
def digits():
    test = load_dataset("digits", "test")
    return test.x[:40], test.y[:40]


def move_warps_with_z(generator) -> None:
    """An untrained STN generator warps by the identity for every z; random localiser heads make the
    output depend on z, as training would."""
    for localizer in generator.localizers:
        torch.nn.init.normal_(localizer[-1].weight, std=0.1)


@pytest.fixture(scope="module")
def cvae():
    torch.manual_seed(0)
    model = small_cvae("stn", channels=1, side=8, latent=8).eval()
    move_warps_with_z(model.generator)
    return model


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu_q, mu_p, lv_q, lv_p = (torch.randn(5, 7, generator=g) for _ in range(4))
    expected = kl_divergence(Normal(mu_q, (0.5 * lv_q).exp()), Normal(mu_p, (0.5 * lv_p).exp())).sum(1)
    assert torch.allclose(kl_normal(mu_q, lv_q, mu_p, lv_p), expected, atol=1e-5)
    assert torch.allclose(kl_normal(mu_q, lv_q, mu_q, lv_q), torch.zeros(5), atol=1e-6)


def test_logvar_is_bounded():
    out = bounded_logvar(torch.tensor([-1e6, 0.0, 1e6]))
    assert out[0] == pytest.approx(LOGVAR_MIN) and out[2] == pytest.approx(LOGVAR_MAX)


def test_rts_pairs_are_seeded_and_reduce_to_the_identity(digits):
    x, _ = digits
    a = rts_pairs(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, rts_pairs(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, rts_pairs(x, torch.Generator().manual_seed(4)))
    assert a.min() >= 0 and a.max() <= 1 and not torch.allclose(a, x, atol=0.05)
    identity = rts_pairs(x, torch.Generator().manual_seed(3), rotation=0, scale=(1, 1), translate=0)
    assert torch.allclose(identity, x, atol=1e-5)


def test_linf_noise_pairs_stay_in_the_ball_and_the_box(digits):
    x, _ = digits
    noisy = linf_noise_pairs(x, torch.Generator().manual_seed(0), eps=0.3)
    assert (noisy - x).abs().max() <= 0.3 + 1e-6 and noisy.min() >= 0 and noisy.max() <= 1


def test_cvae_loss_and_distance(cvae, digits):
    x, _ = digits
    x_tilde = rts_pairs(x, torch.Generator().manual_seed(0))
    total, recon, kl = (t.item() for t in cvae.loss(x, x_tilde, beta=0.5, gen=torch.Generator().manual_seed(0)))
    assert kl >= 0 and total == pytest.approx(recon + 0.5 * kl, rel=1e-6)
    r = cvae.standardized_distance(x, x_tilde)
    assert r.shape == (40,) and (r >= 0).all()
    with torch.no_grad():
        mu_p, _ = cvae.prior(x)
        assert torch.equal(cvae.perturb(x, torch.zeros_like(mu_p)), cvae.generator(x, mu_p))


def test_stn_sets_contain_only_warps_of_x():
    """z reaches the STN generator's output only through warps of x: a blank image has a one-point set,
    whatever the latent (a generator that could paint strokes from z would make any set trivially attackable)."""
    torch.manual_seed(0)
    generator = small_cvae("stn", 1, 24, latent=8, transforms=3, warp="similarity").generator
    move_warps_with_z(generator)
    blank = torch.zeros(1, 1, 24, 24).expand(16, -1, -1, -1)
    out = generator(blank, 5 * torch.randn(16, 8))
    assert torch.allclose(out, out[:1].expand_as(out))
    digit = torch.zeros(1, 1, 24, 24)
    digit[..., 6:18, 11:13] = 1
    assert not torch.allclose(*generator(digit.expand(2, -1, -1, -1), 5 * torch.randn(2, 8)))


def test_architecture_revision_is_part_of_every_hash_downstream(monkeypatch):
    from bench.models.archs import REVISIONS
    from bench.models.card import load_model_card

    def hashes():
        cvae, classifier = load_model_card("mnist-rts-cvae"), load_model_card("mnist42-cnn-cvae-aug")
        return cvae.hash, cvae.training_hash, classifier.training_hash, classifier.hash

    before = hashes()
    monkeypatch.setitem(REVISIONS, "cvae-stn", REVISIONS["cvae-stn"] + 1)
    # the CVAE's weights, its cached statistics (keyed by the card hash), every classifier trained on it
    # and that classifier's results (keyed by its card hash)
    assert all(a != b for a, b in zip(before, hashes()))


def test_cvae_training_lowers_its_loss(digits):
    torch.manual_seed(0)
    model = small_cvae("stn", channels=1, side=8, latent=8)
    train = load_dataset("digits", "train").x[:256]
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(15):
        for i in range(0, 256, 64):
            x = train[i:i + 64]
            loss, _, _ = model.loss(x, rts_pairs(x, gen), beta=0.1, gen=gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert sum(losses[-4:]) < 0.8 * sum(losses[:4])


@pytest.mark.parametrize("eps", [0.5, 2.0, 5.0])
def test_latent_attack_never_leaves_the_ball(cvae, digits_model, digits, eps):
    x, y = digits
    x_adv, u = latent_pgd(cvae, digits_model, x, y, eps=eps, steps=10, step_size=eps / 5, restarts=2,
                          gen=torch.Generator().manual_seed(0))
    assert (u.flatten(1).norm(dim=1) <= eps * (1 + 1e-5)).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.allclose(x_adv, cvae.perturb(x, u), atol=1e-6)


def test_eps_zero_gives_the_prior_mean_image(cvae, digits_model, digits):
    x, y = digits
    x_adv, u = latent_pgd(cvae, digits_model, x, y, eps=0.0, steps=5, step_size=0.1,
                          gen=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mu_p, _ = cvae.prior(x)
        assert torch.equal(u, torch.zeros_like(u))
        assert torch.allclose(x_adv, cvae.generator(x, mu_p), atol=1e-6)


def test_latent_attack_is_deterministic_under_a_seed(cvae, digits_model, digits):
    x, y = digits
    runs = [latent_pgd(cvae, digits_model, x, y, eps=2.0, steps=10, step_size=0.4,
                       gen=torch.Generator().manual_seed(seed)) for seed in (7, 7, 8)]
    assert torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][1], runs[2][1])


def test_latent_attack_beats_its_own_start(cvae, digits_model, digits):
    """More steps never leave more points correctly classified than the random start alone."""
    x, y = digits

    def correct(steps):
        x_adv, _ = latent_pgd(cvae, digits_model, x, y, eps=3.0, steps=steps, step_size=0.6,
                              gen=torch.Generator().manual_seed(0))
        with torch.no_grad():
            return (digits_model(x_adv).argmax(1) == y).sum().item()

    assert correct(20) <= correct(0)


def test_projection_is_onto_the_ball():
    u = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    assert torch.allclose(project_l2(u, 1.0), torch.tensor([[0.6, 0.8], [0.3, 0.4]]))


def test_quality_metrics_are_ordered_and_seeded(cvae, digits):
    from bench.families.learned_sets.quality_metrics import encoder_ae, expected_ae, identity_error, pgd_ae

    x, _ = digits
    x_tilde = rts_pairs(x, torch.Generator().manual_seed(1))
    enc = encoder_ae(cvae, x, x_tilde, eps=2.0)
    pgd = pgd_ae(cvae, x, x_tilde, eps=2.0, steps=20)
    assert (pgd <= enc + 1e-7).all() and (pgd >= 0).all()
    assert pgd.mean() < enc.mean()  # the descent finds better points than the encoder on average
    eae = expected_ae(cvae, x, x_tilde, eps=2.0, gen=torch.Generator().manual_seed(0))
    assert torch.equal(eae, expected_ae(cvae, x, x_tilde, eps=2.0, gen=torch.Generator().manual_seed(0)))
    assert torch.allclose(identity_error(x, x_tilde), ((x - x_tilde) ** 2).mean((1, 2, 3)))


def _centroid(image: torch.Tensor) -> tuple[float, float]:
    side = image.shape[-1]
    ys, xs = torch.meshgrid(torch.arange(side).float(), torch.arange(side).float(), indexing="ij")
    weight = image[0, 0]
    return float((xs * weight).sum() / weight.sum()), float((ys * weight).sum() / weight.sum())


@pytest.mark.parametrize("angle", [-45.0, 45.0])
@pytest.mark.parametrize("scale", [0.7, 1.3])
@pytest.mark.parametrize("shift", [(7, 7), (-7, 7), (7, -7)])
def test_rts_rotates_and_scales_about_the_centre_then_translates_in_output_pixels(angle, scale, shift):
    """Where a single bright pixel lands: p_out = scale * R(-angle) (p - c) + c + shift (as RandomAffine)."""
    import math

    from bench.families.learned_sets.pairs import affine_warp, rts_theta

    side, (px, py) = 42, (26, 20)
    image = torch.zeros(1, 1, side, side)
    image[0, 0, py, px] = 1
    theta = rts_theta(torch.tensor([math.radians(angle)]), torch.tensor([scale]),
                      torch.tensor([2 * shift[0] / side]), torch.tensor([2 * shift[1] / side]))
    c, a = (side - 1) / 2, math.radians(angle)
    expected = (scale * (math.cos(a) * (px - c) + math.sin(a) * (py - c)) + c + shift[0],
                scale * (-math.sin(a) * (px - c) + math.cos(a) * (py - c)) + c + shift[1])
    assert _centroid(affine_warp(image, theta)) == pytest.approx(expected, abs=0.15)


def test_rts_moves_the_centre_by_at_most_the_translation_per_axis():
    """At the paper's extremes (45 degrees, scale 1.3) the centre moves at most 7 px along each axis; applying
    the translation before rotating and zooming moved it up to about 12 px."""
    side = 42
    image = torch.zeros(400, 1, side, side)
    image[:, 0, 20:22, 20:22] = 1  # the four centre pixels
    moved = rts_pairs(image, torch.Generator().manual_seed(0), rotation=45, scale=(1.3, 1.3), translate=7 / 42)
    offsets = torch.tensor([_centroid(m[None]) for m in moved]) - (side - 1) / 2
    assert offsets.abs().max() <= 7 + 0.2
    assert offsets.abs().max() > 6  # the range is used


def test_a_pair_source_revision_changes_every_hash_trained_or_evaluated_on_its_pairs(monkeypatch):
    from bench.families.learned_sets.pairs import RTS
    from bench.models.card import load_model_card
    from bench.threats import load_threat_card

    def hashes():
        return (load_model_card("mnist-rts-cvae").training_hash, load_model_card("mnist42-cnn-rts-aug").training_hash,
                load_threat_card("perturbed-rts").hash, load_model_card("mnist42-cnn-cvae-adv").training_hash)

    before = hashes()
    monkeypatch.setattr(RTS, "revision", RTS.revision + 1)
    assert all(a != b for a, b in zip(before, hashes()))
