"""The engine's Square attack: inside the threat model, batch-independent, compacting, and as strong as the official
``pyautoattack.square.SquareAttack`` run as AutoAttack's standard version runs it."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.data import load_dataset
from bench.threats.aa_engine import rng
from bench.threats.aa_engine.geometry import norms
from bench.threats.aa_engine.square import (DRAW_CHUNK, _signs, eta, margin, p_schedule, run_square,
                                            side, square)

official = pytest.importorskip("pyautoattack.square")

NORMS = ["Linf", "L2", "L1"]
# radii at which Square fools roughly half of the tiny digits model's correct test points within 300 queries
EPS = {"Linf": 0.15, "L2": 0.8, "L1": 2.0}


def keys_for(n: int, seed: int = 0) -> torch.Tensor:
    return rng.point_keys(seed, torch.arange(n), "square-test")


@pytest.fixture(scope="module")
def points(model):
    """The test digits the model classifies correctly (the points AutoAttack hands Square)."""
    test = load_dataset("digits", "test")
    with torch.no_grad():
        right = model(test.x).argmax(1) == test.y
    return test.x[right], test.y[right]


class Counting:
    """The model, recording how many rows every forward pass gets."""

    def __init__(self, model):
        self.model, self.rows = model, []

    def __call__(self, x):
        self.rows.append(len(x))
        return self.model(x)


def random_model(c: int, h: int, w: int) -> nn.Module:
    """An untrained net for image shapes the digits model does not take."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * h * w, 10)).eval()


def test_p_schedule_matches_the_official():
    attack = official.SquareAttack(None, norm="Linf", eps=0.1, resc_schedule=False)
    assert all(p_schedule(i) == attack.p_selection(i) for i in range(10_000))
    # sides: sqrt(p h w) rounded; L2/L1 at least 3 and odd; never over the image
    assert side(0, "Linf", 3, 32, 32) == 29 and side(0, "L2", 3, 32, 32) == 29 and side(0, "L2", 1, 8, 8) == 7
    assert side(4500, "Linf", 1, 8, 8) == 1 and side(4500, "L1", 1, 8, 8) == 3
    assert side(60, "L2", 1, 28, 28) == 13  # p = 0.8 / 4 at iteration 60: round(sqrt(0.2 * 784)) = 13
    assert side(0, "Linf", 1, 5, 40) == 5


def official_eta(attack, s: int, transposed: bool) -> torch.Tensor:
    """The official's eta(s), which transposes itself when a global ``torch.rand(1)`` exceeds 0.5: run it from a
    generator state whose next draw is known, so the orientation is the one asked for."""
    with torch.random.fork_rng():
        for seed in range(100):
            torch.manual_seed(seed)
            if (torch.rand(1).item() > 0.5) == transposed:
                torch.manual_seed(seed)
                return official.SquareAttack.eta(attack, s)
    raise AssertionError("no seed gives that orientation")


@pytest.mark.parametrize("norm", ["L2", "L1"])
def test_eta_matches_the_official(norm):
    attack = official.SquareAttack(None, norm=norm, eps=1.0)
    attack.device = torch.device("cpu")
    for s in range(1, 16):
        assert torch.allclose(eta(s, norm), official_eta(attack, s, transposed=False), atol=1e-6), s


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 20, 12)])
@pytest.mark.parametrize("norm", NORMS)
def test_inside_the_threat_model_and_fooled_is_the_models_verdict(norm, shape):
    c, h, w = shape
    model = random_model(c, h, w)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(12, c, h, w, generator=gen)
    x[:4] = x[:4].round()  # pixels at 0 and 1, where the box clips
    with torch.no_grad():
        y = model(x).argmax(1)
    scale = {"Linf": 0.03, "L2": 0.3 * math.sqrt(h * w * c / 64), "L1": 2.0 * math.sqrt(h * w * c / 64)}[norm]
    for eps in (scale, 10 * scale):
        x_adv, fooled = square(model, x, y, norm=norm, eps=eps, keys=keys_for(len(x)), n_queries=60)
        assert x_adv.shape == x.shape and fooled.dtype == torch.bool and fooled.shape == (len(x),)
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert (norms(x_adv - x, norm) <= eps * (1 + 1e-5) + 1e-6).all()
        with torch.no_grad():
            assert torch.equal(model(x_adv).argmax(1) != y, fooled)
    assert fooled.any()  # at ten times the radius, something is fooled: the check above saw both verdicts


@pytest.mark.parametrize("norm", NORMS)
def test_a_points_outcome_does_not_depend_on_its_batch(model, points, norm):
    x, y = points[0][:10], points[1][:10]
    keys = keys_for(len(x))
    together = run_square(model, x, y, norm=norm, eps=EPS[norm], keys=keys, n_queries=150)
    assert 0 < together.fooled.sum() < len(x)  # both kinds of point, and some leave the batch early
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    shuffled = run_square(model, x[order], y[order], norm=norm, eps=EPS[norm], keys=keys[order], n_queries=150)
    for i in range(len(x)):
        alone = run_square(model, x[i:i + 1], y[i:i + 1], norm=norm, eps=EPS[norm], keys=keys[i:i + 1],
                           n_queries=150)
        for other, j in ((alone, 0), (shuffled, int((order == i).nonzero()))):
            assert bool(other.fooled[j]) == bool(together.fooled[i])
            assert int(other.queries[j]) == int(together.queries[i])
            assert torch.allclose(other.x_adv[j], together.x_adv[i], atol=1e-6)


@pytest.mark.parametrize("norm", NORMS)
def test_fooled_points_leave_the_batch(model, points, norm):
    x, y = points[0][:60], points[1][:60]
    counting = Counting(model)
    n_queries = 100
    result = run_square(counting, x, y, norm=norm, eps=EPS[norm], keys=keys_for(len(x)), n_queries=n_queries)
    fooled, queries = result.fooled, result.queries
    assert 0 < fooled.sum() < len(x)
    # the official's accounting: one query for the start, one per iteration still running; all n_queries if never
    assert (queries[~fooled] == n_queries + 1).all() and (queries[fooled] <= n_queries + 1).all()
    # pass t saw exactly the points still running then: no row was spent on a point already fooled
    assert counting.rows == [int((queries > t).sum()) for t in range(len(counting.rows))]
    assert sum(counting.rows) == int(queries.sum()) < len(x) * (n_queries + 1)


class Replayed(official.SquareAttack):
    """The official Square drawing from a queue instead of the global generator: its random_int, random_choice
    and eta's coin, in the order it calls them."""

    def __init__(self, *args, queue: list, **kwargs):
        super().__init__(*args, **kwargs)
        self.queue, self.etas = queue, {}

    def _next(self, kind: str):
        got, value = self.queue.pop(0)
        assert got == kind, (got, kind)
        return value

    def random_int(self, low=0, high=1, shape=(1,)):
        return torch.tensor([self._next("int")])

    def random_choice(self, shape):
        return self._next("sign").reshape(shape)

    def eta(self, s):
        transposed = self._next("transpose")
        if (s, transposed) not in self.etas:
            self.etas[s, transposed] = official_eta(self, s, transposed)
        return self.etas[s, transposed].clone()


def our_draws(key: torch.Tensor, norm: str, c: int, h: int, w: int, n_queries: int) -> list:
    """One point's draws as ``run_square`` makes them (white box: its streams, chunks and columns), in the order the
    official consumes its own: the start (Linf: a sign per channel and column; L2/L1: per init block, eta's coin
    and a sign per channel), then per iteration the corners (top, left; L2/L1 also the emptied square's), eta's
    coin (L2/L1) and a sign per channel."""
    queue = []
    init = rng.derive(key, "square:init")
    if norm == "Linf":
        queue.append(("sign", _signs(rng.uniform(init, 0, (c, 1, w))[0])))
    else:
        s = max(h // 5, 1)
        blocks = rng.uniform(init, 0, ((h // s) * (w // s), 1 + c))[0]
        for block in blocks:
            queue += [("transpose", bool(block[0] > 0.5)), ("sign", _signs(block[1:]))]
    corners = 2 if norm == "Linf" else 4
    step = rng.derive(key, "square:step")
    for it in range(n_queries):
        if it % DRAW_CHUNK == 0:
            chunk = rng.uniform(step, it // DRAW_CHUNK, (DRAW_CHUNK, corners + 1 + c))[0]
        u, s = chunk[it % DRAW_CHUNK], side(it, norm, c, h, w)
        for i, room in enumerate([h - s, w - s] * (corners // 2)):
            queue.append(("int", min(math.floor(float(u[i]) * room), max(room - 1, 0))))
        if norm != "Linf":
            queue.append(("transpose", bool(u[corners] > 0.5)))
        queue.append(("sign", _signs(u[corners + 1:])))
    return queue


@pytest.mark.parametrize("case", ["digits", "rgb"])
@pytest.mark.parametrize("norm", NORMS)
def test_the_officials_trajectory_given_the_same_draws(model, points, norm, case):
    """Fed our draws (one point at a time, where the official's batch-wide draws are the point's own), the official
    ends where we do, after as many queries: init, side schedule, update, projection and acceptance agree step for
    step, on the digits model and on three-channel images (where L2/L1 split the budget between channels). The
    end-to-end comparison below cannot see small slips (a Linf step of eps instead of 2 eps, a minimum L2 side of
    1, squares that may touch the last row), this one does."""
    if case == "digits":
        x, y = points[0][:12], points[1][:12]
        eps = EPS[norm]
    else:  # 10 x 10: the official's init grid fits (it fails on some sizes, e.g. 12 x 12)
        model = random_model(3, 10, 10)
        x = torch.rand(6, 3, 10, 10, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            y = model(x).argmax(1)
        eps = {"Linf": 0.05, "L2": 0.5, "L1": 4.0}[norm]
    n_queries, keys = 150, keys_for(len(x), seed=5)
    c, h, w = x.shape[1:]
    for i in range(len(x)):
        ours = run_square(model, x[i:i + 1], y[i:i + 1], norm=norm, eps=eps, keys=keys[i:i + 1], n_queries=n_queries)
        queue = our_draws(keys[i:i + 1], norm, c, h, w, n_queries)
        attack = Replayed(model, norm=norm, eps=eps, n_queries=n_queries, p_init=0.8, resc_schedule=False,
                          queue=queue)
        attack.init_hyperparam(x[i:i + 1])
        their_queries, theirs = attack.attack_single_run(x[i:i + 1], y[i:i + 1])
        assert int(their_queries[0]) == int(ours.queries[0]), i
        assert torch.allclose(theirs, ours.x_adv, atol=1e-5), i


def official_run(model, x, y, norm: str, eps: float, n_queries: int, seed: int):
    """The official Square as AutoAttack's standard version sets it up (its ``perturb`` seeds the global generator
    and calls ``attack_single_run`` on the correctly classified points), -> (fooled, queries, final margins)."""
    attack = official.SquareAttack(model, norm=norm, eps=eps, n_queries=n_queries, p_init=0.8, n_restarts=1,
                                   seed=seed, loss="margin", resc_schedule=False)
    attack.init_hyperparam(x)
    torch.manual_seed(seed)
    queries, x_adv = attack.attack_single_run(x, y)
    with torch.no_grad():
        logits = model(x_adv)
    return logits.argmax(1) != y, queries.long(), margin(logits, y)


@pytest.mark.parametrize("norm", NORMS)
def test_as_strong_as_the_official(model, points, norm):
    """Ours against the official on the same ~450 points, at a radius where about half are fooled.

    1. Robust accuracy after 1, 11, 51 and 301 queries (the p schedule does not depend on the budget, so a point
    fooled within q queries is one a (q - 1)-iteration run fools). The runs share their points, so the sampling
    error of their difference is that of the points on which they disagree (McNemar): with b points fooled by the
    official only and c by ours only, b - c has a standard deviation of about sqrt(b + c) when the attacks are
    equally strong. We allow 3.5 of those plus one point: four checks per norm, and the official's draws are
    shared by its whole batch, which correlates its outcomes and widens its spread a little beyond the binomial
    one (over 4 seeds per norm, |z| reached 2.7 once; over 24 seeds the mean robust accuracies for L2 differed by
    0.002).
    2. The margin left on the points neither run fools (the official returns its lowest-margin iterate there, as
    we do): a paired t statistic of the per-point differences, |t| <= 3.5 for the same reasons (over 4 seeds per
    norm it stayed within 2.7). This one is the sharper: dropping the old window content from the L2/L1 update, not
    emptying the second square, or a minimum side of 1 for L1 give |t| of 4 to 20, and a flat p schedule or a Linf
    start at x fail the robust-accuracy checks by tens of points."""
    x, y = points
    n_queries = 300
    theirs, their_queries, their_margins = official_run(model, x, y, norm, EPS[norm], n_queries, seed=0)
    result = run_square(model, x, y, norm=norm, eps=EPS[norm], keys=keys_for(len(x)), n_queries=n_queries)
    with torch.no_grad():
        logits = model(result.x_adv)
    assert torch.equal(logits.argmax(1) != y, result.fooled)
    for q in (1, 11, 51, n_queries + 1):
        a, b = theirs & (their_queries <= q), result.fooled & (result.queries <= q)
        only_theirs, only_ours = int((a & ~b).sum()), int((b & ~a).sum())
        tolerance = 3.5 * math.sqrt(only_theirs + only_ours) + 1
        assert abs(only_theirs - only_ours) <= tolerance, (q, int(a.sum()), int(b.sum()), only_theirs, only_ours)
    assert 0.25 < result.fooled.float().mean() < 0.75  # a radius where a weaker or stronger attack would show
    neither = ~theirs & ~result.fooled
    gap = (their_margins - margin(logits, y))[neither]
    t = gap.mean() / (gap.std() / math.sqrt(len(gap)))
    assert abs(t) <= 3.5, (float(t), float(their_margins[neither].mean()), float(gap.mean()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("norm", NORMS)
def test_cuda_gives_the_cpu_result(model, points, norm):
    x, y = points[0][:100], points[1][:100]
    cpu = run_square(model, x, y, norm=norm, eps=EPS[norm], keys=keys_for(len(x)), n_queries=200)
    gpu_model = model.to("cuda")
    try:
        gpu = run_square(gpu_model, x.cuda(), y.cuda(), norm=norm, eps=EPS[norm], keys=keys_for(len(x)).cuda(),
                         n_queries=200)
    finally:
        model.to("cpu")
    assert (norms(gpu.x_adv.cpu() - x, norm) <= EPS[norm] * (1 + 1e-5) + 1e-6).all()
    # the same draws on both; only float differences between the devices' kernels may flip a near-tie
    assert (gpu.fooled.cpu() == cpu.fooled).float().mean() >= 0.95
    assert (gpu.queries.cpu() == cpu.queries).float().mean() >= 0.9


def test_edge_cases(model, points):
    x, y = points[0][:3], points[1][:3]
    x_adv, fooled = square(model, x[:0], y[:0], norm="L2", eps=0.5, keys=keys_for(0))
    assert x_adv.shape == (0, 1, 8, 8) and fooled.shape == (0,)
    with pytest.raises(ValueError, match="Linf"):
        square(model, x, y, norm="L0", eps=1.0, keys=keys_for(3))
    # no iteration: the start alone, one query each
    result = run_square(model, x, y, norm="Linf", eps=0.1, keys=keys_for(3), n_queries=0)
    assert (result.queries == 1).all() and (norms(result.x_adv - x, "Linf") <= 0.1 + 1e-6).all()
