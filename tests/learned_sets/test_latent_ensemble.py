"""The default learned-set threat: latent APGD (in the ball, APGD's schedule), the latent attack ensemble (its
verdicts are its members' own runs combined point by point), and draws keyed by point (a verdict does not
depend on the batch size or on how many points are evaluated)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import bench
from bench.families.learned_sets.latent_apgd import checkpoints, dlr_targeted, latent_apgd
from bench.ops.draws import PointDraws
from bench.store import Store

MODELS = Path(__file__).parents[1] / "fingerprints" / "models"
CVAE = str(MODELS / "digits-cvae.yaml")
MODEL = str(MODELS / "digits-cnn.yaml")
KW = dict(device="cpu", threads=1, progress=False)


def card(folder: Path, name: str, family: str, **params) -> str:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"id": name, "family": family, "params": {"cvae": CVAE, **params}}))
    return str(path)


def robust(results: Path, summary) -> "object":
    return Store(results).read_run(summary.run_id).rows.set_index("index")["robust"]


def test_checkpoints_follow_apgd_and_dlr_is_positive_once_the_target_wins():
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]  # Croce & Hein's p_j for 100 iterations
    assert all(0 < c < 10 for c in checkpoints(10))
    logits = torch.tensor([[5.0, 1.0, 0.5, 0.2, 0.1], [1.0, 5.0, 0.5, 0.2, 0.1]])
    loss = dlr_targeted(logits, torch.tensor([0, 0]), torch.tensor([1, 1]))
    assert loss[0] < 0 < loss[1]
    assert torch.allclose(dlr_targeted(3 * logits, torch.tensor([0, 0]), torch.tensor([1, 1])), loss)  # scale-free


def test_point_draws_depend_only_on_the_point_and_the_stream():
    keys = torch.tensor([7, 3, 11, 5])
    every = PointDraws(0, keys).randn((3,))
    assert torch.equal(PointDraws(0, keys[[2, 0]]).randn((3,)), every[[2, 0]])
    assert torch.equal(PointDraws(0, keys).subset(torch.tensor([False, True, False, True])).randn((3,)),
                       every[[1, 3]])
    assert not torch.equal(PointDraws(0, keys, "other").randn((3,)), every)
    assert not torch.equal(PointDraws(1, keys).randn((3,)), every)
    draws = PointDraws(0, keys)
    first, second = draws.rand((2,), lead=(5,)), draws.rand((2,))
    assert first.shape == (5, 4, 2) and not torch.equal(second, first[0])  # a stream goes on


class ShiftSet(torch.nn.Module):
    """A perturbation set whose worst case is known: g(x, z) = x + z with a standard-normal prior."""

    def prior(self, x):
        return torch.zeros_like(x), torch.zeros_like(x)

    def generator(self, x, z):
        return x + z


def test_latent_apgd_finds_exactly_the_points_a_linear_model_can_lose_within_the_ball():
    """Cross-entropy may peak where the point is still right (which is why the ensemble adds the targeted DLR
    loss); targeted at the nearest wrong class, APGD finds every point the ball can break, and no other."""
    torch.manual_seed(0)
    model, x, eps = torch.nn.Linear(6, 5), torch.randn(400, 6), 0.5
    logits = model(x).detach()
    y = logits.argmax(1)
    right = torch.nn.functional.one_hot(y, 5).bool()
    w = model.weight.detach()  # the radius that fools a point towards class j: its margin / |w_y - w_j|
    radius = ((logits.gather(1, y[:, None]) - logits) / (w[y][:, None, :] - w[None]).norm(dim=2).clamp_min(1e-12)
              ).masked_fill(right, torch.inf)
    breakable = radius.amin(1) < eps
    for aim in (None, radius.argmin(1)):
        u, fooled = latent_apgd(ShiftSet(), model, x, y, eps=eps, steps=10, restarts=1,
                                draws=PointDraws(0, torch.arange(len(x))), target=aim)
        assert (u.norm(dim=1) <= eps * (1 + 1e-5)).all()
        assert (model(x + u).argmax(1) != y).equal(fooled)
        assert not (fooled & ~breakable).any() and fooled.sum() >= 0.8 * breakable.sum()
    assert fooled.equal(breakable) and 0 < int(breakable.sum()) < len(x)


def test_the_ensemble_is_its_members_own_runs_combined_point_by_point(tmp_path):
    r, params = tmp_path / "r", dict(eps=0.3, steps=6)
    together = bench.evaluate(MODEL, card(tmp_path, "ens", "learned-cvae", **params, targets=2, samples=40), n=60,
                              results=r, **KW)
    ce = bench.evaluate(MODEL, card(tmp_path, "ce", "learned-cvae-apgd", **params), n=60, results=r, **KW)
    dlr = bench.evaluate(MODEL, card(tmp_path, "dlr", "learned-cvae-apgd", **params, loss="dlr-targeted", targets=2),
                         n=60, results=r, **KW)
    random = bench.evaluate(MODEL, card(tmp_path, "random", "learned-cvae-random", eps=0.3, samples=40), n=60,
                            results=r, **KW)
    combined = robust(r, ce) & robust(r, dlr) & robust(r, random)
    rows = Store(r).read_run(together.run_id).rows.set_index("index").loc[combined.index]
    assert rows["robust"].equals(combined)
    assert together.robust_acc <= min(s.robust_acc for s in (ce, dlr, random))
    broken = rows[["broken_by_apgd_ce", "broken_by_apgd_dlr_t", "broken_by_random"]]
    assert (broken.sum(axis=1) <= 1).all() and broken.any(axis=1).equals(rows["clean_correct"] & ~rows["robust"])
    assert rows["broken_by_apgd_ce"].equals(rows["clean_correct"] & ~robust(r, ce).loc[rows.index])
    assert together.stats["broken_by:apgd_ce"] == int(rows["broken_by_apgd_ce"].sum()) > 0


@pytest.mark.parametrize("family,params", [("learned-cvae", {"steps": 4, "targets": 2, "samples": 20}),
                                           ("learned-cvae-pgd", {"steps": 4, "restarts": 2})])
def test_a_verdict_does_not_depend_on_the_batch_or_the_number_of_points(tmp_path, family, params):
    threat = card(tmp_path, "t", family, eps=0.4, **params)
    small = bench.evaluate(MODEL, threat, n=30, batch_size=30, results=tmp_path / "a", **KW)
    large = bench.evaluate(MODEL, threat, n=90, batch_size=45, results=tmp_path / "b", **KW)
    few, many = robust(tmp_path / "a", small), robust(tmp_path / "b", large)
    assert few.equals(many.loc[few.index])


def test_the_real_family_grid_counts_what_the_ball_holds_and_needs_rts_pairs(tmp_path):
    r = tmp_path / "r"
    rts = {"kind": "rts", "rotation": 30, "scale": [0.8, 1.2], "translate": 0.125}
    grid = dict(pairs=rts, rotations=3, scales=2, shifts=3)  # 54 transformations
    runs = {eps: bench.evaluate(MODEL, card(tmp_path, f"grid-{eps}", "learned-cvae-real-grid", eps=eps, **grid),
                                n=40, results=r, **KW) for eps in (1e-6, 0.5, 1e6)}
    rows = {eps: Store(r).read_run(s.run_id).rows.set_index("index") for eps, s in runs.items()}
    assert (rows[1e-6]["real_members"] == 0).all() and rows[1e-6]["robust"].equals(rows[1e-6]["clean_correct"])
    assert (rows[1e6]["real_members"] == 54).all()
    assert (rows[0.5]["real_members"] <= 54).all() and not (rows[0.5]["robust"] & ~rows[1e-6]["robust"]).any()
    assert not (rows[1e6]["robust"] & ~rows[0.5]["robust"]).any() and runs[1e6].robust_acc < runs[1e-6].robust_acc
    with pytest.raises(bench.errors.BenchError, match="needs a set learned from rts pairs"):
        bench.evaluate(MODEL, card(tmp_path, "no-pairs", "learned-cvae-real-grid", eps=0.5), n=4, results=r, **KW)


def test_the_smoothed_classifier_attack_never_breaks_a_point_certified_beyond_its_radius():
    """SmoothAdv on the smoothed classifier (not its base classifier), on a set whose geometry is known: within a
    point's certified radius the smoothed prediction stays, beyond it the attack breaks points."""
    from types import SimpleNamespace

    from bench.families.learned_sets.smooth_attack import smooth_adv
    from bench.families.learned_sets.smoothing import smoothed_prediction

    torch.manual_seed(0)
    model, x, sigma = torch.nn.Linear(6, 5), torch.randn(200, 6), 0.5
    y = model(x).argmax(1).detach()
    p = SimpleNamespace(sigma=sigma, n0=100, n=2000, alpha=0.001, chunk=4000)
    gen = torch.Generator().manual_seed(0)
    candidate, p_lower = smoothed_prediction(ShiftSet(), model, x, p, 5, gen)
    radius = sigma * torch.distributions.Normal(0.0, 1.0).icdf(p_lower.clamp(0.5, 1 - 1e-9).float())
    certified = (p_lower >= 0.5) & (candidate == y)
    for eps in (0.2, 0.6):
        u = smooth_adv(ShiftSet(), model, x, y, sigma=sigma, eps=eps, steps=20, samples=32, gen=gen)
        assert (u.norm(dim=1) <= eps * (1 + 1e-5)).all()
        moved, lower = smoothed_prediction(ShiftSet(), model, x, p, 5, gen, shift=u)
        kept = (lower >= 0.5) & (moved == y)
        inside = certified & (radius >= eps)
        assert inside.sum() > 20 and kept[inside].all()
        assert (certified & ~kept).any()  # points certified below eps do fall


def test_a_known_rotation_scale_and_shift_is_recovered_and_judged_against_the_range():
    from bench.families.learned_sets.pairs import RTS, affine_warp, rts_theta
    from bench.families.learned_sets.real_fit import fit_rts, outside

    canvas = torch.zeros(1, 1, 28, 28)
    canvas[..., 6:22, 9:13] = 1.0  # an L: no symmetry for the fit to confuse
    canvas[..., 18:22, 9:20] = 1.0
    x = torch.nn.functional.avg_pool2d(canvas, 3, 1, 1).repeat(3, 1, 1, 1)
    truth = torch.tensor([[20.0, 1.1, 0.05, -0.05], [-10.0, 0.9, 0.0, 0.1], [5.0, 0.5, 0.0, 0.0]])
    theta = rts_theta(truth[:, 0] * torch.pi / 180, truth[:, 1], 2 * truth[:, 2], 2 * truth[:, 3])
    target = affine_warp(x, theta)
    spec = RTS(kind="rts", rotation=30, scale=(0.8, 1.2), translate=0.125)
    params, error = fit_rts(x, target, spec, angles=5, steps=300, lr=0.05)
    assert torch.allclose(params[:, 0], truth[:, 0], atol=2.0)
    assert torch.allclose(params[:, 1:], truth[:, 1:], atol=0.03)
    assert (error < 0.1 * ((x - target) ** 2).flatten(1).mean(1)).all()
    assert outside(params, spec).tolist() == [False, False, True]  # scale 0.5 is below the family's 0.8
