"""The fused CPU kernels against the torch steps they replace, on the same inputs: FAB's step to float rounding (it
computes in float64 inside), its L2 and L1 records likewise, the rest bit for bit; the result does not depend on the
thread count, and the torch steps still run where the kernels do not apply."""
from __future__ import annotations

import pytest
import torch

from bench.threats.aa_engine import cpu_kernels
from bench.threats.aa_engine.apgd import linf_step
from bench.threats.aa_engine.fab import step

pytest.importorskip("numba")


@pytest.fixture
def torch_steps(monkeypatch):
    """The torch steps, as on a machine without numba."""
    monkeypatch.setattr(cpu_kernels, "AVAILABLE", False)


def _fab_problem(rows: int, seed: int, dtype=torch.float32):
    """FAB iterates and clean points in [0, 1] (a fifth of the pixels on the box's faces), gradients with a fifth
    exactly 0 and a few rows all 0, and boundary values from 0 (on the plane) to far out of the box's reach."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(rows, 1, 8, 8, generator=g, dtype=dtype)
    x0[..., :2, :] = x0[..., :2, :].round()
    x1 = (x0 + 0.2 * torch.randn(x0.shape, generator=g, dtype=dtype)).clamp(0.0, 1.0)
    w = torch.randn(rows, 64, generator=g, dtype=dtype)
    w[torch.rand(rows, 64, generator=g) < 0.2] = 0
    w[:3] = 0
    f = torch.randn(rows, generator=g, dtype=dtype) * torch.logspace(-3, 2, rows, dtype=dtype)
    f[3:6] = 0
    return x1, x0, w, f


def _torch_fab(monkeypatch, *args, **kwargs):
    with monkeypatch.context() as m:
        m.setattr(cpu_kernels, "AVAILABLE", False)
        return step(*args, **kwargs)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_fab_step_is_the_torch_step_to_rounding(monkeypatch, norm):
    """In float64 the two agree to 1e-9 (both solve the same water filling exactly, summing in other orders); in
    float32 the kernel (float64 inside) is at least as close to the float64 step as the torch step in float32."""
    kwargs = dict(norm=norm, eta=1.05, alpha_max=0.1)
    x1, x0, w, f = _fab_problem(300, seed=1, dtype=torch.float64)
    exact = _torch_fab(monkeypatch, x1, x0, w, f, **kwargs)
    fused = cpu_kernels.fab_step(x1, x0, w, f, **kwargs)
    assert fused is not None and fused.dtype == torch.float64
    moved = (exact - x1).flatten(1).abs().amax(1) > 1e-3
    assert moved.sum() > 250  # the steps are not trivial
    torch.testing.assert_close(fused, exact, rtol=0, atol=1e-9)
    single = [x.float() for x in (x1, x0, w, f)]
    fused32 = cpu_kernels.fab_step(*single, **kwargs)
    torch32 = _torch_fab(monkeypatch, *single, **kwargs)
    assert fused32.dtype == torch.float32
    assert (fused32.double() - exact).abs().max() <= max((torch32.double() - exact).abs().max(), 1e-7)


def test_fab_step_does_not_depend_on_threads():
    x1, x0, w, f = _fab_problem(64, seed=2)
    before = torch.get_num_threads()
    try:
        out = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out.append(cpu_kernels.fab_step(x1, x0, w, f, norm="Linf", eta=1.05, alpha_max=0.1))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out[0], out[1])


def test_fab_step_leaves_non_finite_gradients_to_the_torch_step(monkeypatch):
    """The kernel's fast arithmetic assumes finite values: a NaN or inf gradient goes to the torch step, whose
    NaN iterate the run then carries as it always has (no adversarial example is ever recorded from it)."""
    x1, x0, w, f = _fab_problem(8, seed=3)
    for bad in (float("nan"), float("inf")):
        w2 = w.clone()
        w2[4, 7] = bad
        assert cpu_kernels.fab_step(x1, x0, w2, f, norm="Linf", eta=1.05, alpha_max=0.1) is None
        out = step(x1, x0, w2, f, norm="Linf", eta=1.05, alpha_max=0.1)
        assert torch.equal(out.isnan(), _torch_fab(monkeypatch, x1, x0, w2, f, norm="Linf", eta=1.05,
                                                   alpha_max=0.1).isnan())
        f2 = f.clone()
        f2[6] = bad
        assert cpu_kernels.fab_step(x1, x0, w, f2, norm="L2", eta=1.05, alpha_max=0.1) is None
        assert cpu_kernels.fab_step(x1.double(), x0.double(), w2.double(), f.double(), norm="L2", eta=1.05,
                                    alpha_max=0.1) is None
    assert cpu_kernels.fab_step(x1, x0, w, f, norm="L1", eta=1.05, alpha_max=0.1) is None  # L1: the torch step


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("a", [1.0, 0.75])
def test_apgd_linf_step_is_the_torch_step_bit_for_bit(monkeypatch, dtype, a):
    g = torch.Generator().manual_seed(4)
    x = torch.rand(50, 3, 6, 6, generator=g, dtype=dtype)
    x[:, 0] = x[:, 0].round()  # on the box's faces
    eps = 8 / 255
    low, high = (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)
    x_adv = torch.minimum(torch.maximum(x + eps * (2 * torch.rand(x.shape, generator=g, dtype=dtype) - 1), low),
                          high)
    x_old = torch.minimum(torch.maximum(x_adv + 0.01 * torch.randn(x.shape, generator=g, dtype=dtype), low), high)
    grad = torch.randn(x.shape, generator=g, dtype=dtype)
    grad[grad.abs() < 0.3] = 0  # sign 0: no move
    grad[0, 0, 0, 0] = float("nan")  # torch's sign: 0, no move
    x_old[1, 0, 0, 0] = float("nan")  # carried through the momentum and the clamp
    step_size = torch.rand(50, generator=g, dtype=dtype) * 2 * eps
    fused = cpu_kernels.apgd_linf_step(x_adv, x_old, grad, step_size, low, high, a)
    monkeypatch.setattr(cpu_kernels, "AVAILABLE", False)
    reference = linf_step(x_adv, x_old, grad, step_size, low, high, a)
    assert fused is not None and fused.dtype == dtype
    assert torch.equal(fused.isnan(), reference.isnan()) and bool(fused.isnan().any())
    assert torch.equal(fused.nan_to_num(), reference.nan_to_num())
    assert (fused != x_adv).float().mean() > 0.3


def test_kernels_apply_on_cpu_floats_only_and_name_themselves(torch_steps):
    assert cpu_kernels.name() is None and not cpu_kernels.usable(torch.zeros(2, 2))


def test_kernels_name_numba_when_available():
    import numba

    assert cpu_kernels.name() == f"numba {numba.__version__}"
    assert cpu_kernels.usable(torch.zeros(2, 2)) and not cpu_kernels.usable(torch.zeros(2, 2, dtype=torch.float16))


def test_square_linf_run_is_the_torch_run_bit_for_bit(monkeypatch, model):
    """Square's L-inf candidates and acceptance fused (the candidate in a buffer kept equal to the best point outside
    each square) against the torch steps (a fresh candidate each iteration): the same examples, outcomes and query
    counts, bit for bit, on a run where points finish at different iterations (so the batch shrinks under both)."""
    from bench.data import load_dataset
    from bench.threats.aa_engine import rng
    from bench.threats.aa_engine.square import run_square

    data = load_dataset("digits", "test")
    x, y = data.x[:40], data.y[:40]
    keys = rng.point_keys(0, torch.arange(40), "square")
    fused = run_square(model, x, y, norm="Linf", eps=0.15, keys=keys, n_queries=300)
    monkeypatch.setattr(cpu_kernels, "AVAILABLE", False)
    reference = run_square(model, x, y, norm="Linf", eps=0.15, keys=keys, n_queries=300)
    assert 5 < int(reference.fooled.sum()) < 35 and len(set(reference.queries.tolist())) > 5
    for ours, theirs in zip((fused.x_adv, fused.fooled, fused.queries),
                            (reference.x_adv, reference.fooled, reference.queries)):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
def test_fab_record_is_the_torch_bookkeeping(monkeypatch, norm):
    """FAB's records and pull backs after a check pass, fused against torch: the same adversarial rows (argmax ties
    and NaN logits as torch's argmax reads them), the same records, the same pulled-back rows; L-inf bit for bit,
    L2 and L1 norms to float rounding (summed in float64)."""
    from bench.threats.aa_engine.fab import _record

    g = torch.Generator().manual_seed(6)
    m, n = 60, 80
    x1 = torch.rand(m, 1, 5, 5, generator=g)
    clean = torch.rand(m, 1, 5, 5, generator=g)
    idx = torch.randperm(n, generator=g)[:m]  # each row its own record, as in a run
    logits = torch.randn(m, 4, generator=g)
    logits[0] = torch.tensor([1.0, 3.0, 3.0, 0.0])  # a tie: the first maximum
    logits[1, 2] = float("nan")  # NaN counts as the largest
    label = torch.randint(0, 4, (m,), generator=g)
    label[0], label[1] = 2, 2
    best0 = torch.rand(n, 1, 5, 5, generator=g)
    norm0 = torch.where(torch.rand(n, generator=g) < 0.5, float("inf"), torch.rand(n, generator=g) * 3)

    def once():
        state = [t.clone() for t in (x1, best0, norm0)]
        count = _record(logits, label, state[0], clean, idx, state[1], state[2], norm=norm, beta=0.9)
        return count, state

    fused_count, fused = once()
    monkeypatch.setattr(cpu_kernels, "AVAILABLE", False)
    count, reference = once()
    assert fused_count == count and 10 < count < m
    exact = (lambda a, b: torch.equal(a, b)) if norm == "Linf" else (
        lambda a, b: torch.allclose(a, b, rtol=1e-6, atol=0))
    for ours, theirs in zip(fused, reference):
        assert exact(ours, theirs)
    assert not torch.equal(reference[0], x1) and not torch.equal(reference[2], norm0)


def test_apgd_bookkeeping_is_the_torch_bookkeeping_bit_for_bit(monkeypatch):
    """APGD's records after a gradient pass, fused against torch: the same best rows (NaN losses never best), the
    same increase counts and previous losses, the same fooled rows (argmax ties and NaN logits as torch reads
    them)."""
    from bench.threats.aa_engine.apgd import _bookkeep, _Points

    g = torch.Generator().manual_seed(7)
    m = 40

    def state() -> _Points:
        g.manual_seed(8)
        x = torch.rand(m, 1, 4, 4, generator=g)
        loss, loss_best, prev = (torch.randn(m, generator=g) for _ in range(3))
        loss[0], loss_best[1], prev[2] = float("nan"), float("nan"), float("nan")
        loss[3] = loss_best[3]  # a tie is no improvement
        return _Points(index=torch.arange(m), x=x, y=torch.randint(0, 4, (m,), generator=g), target=None,
                       x_adv=torch.rand(x.shape, generator=g), x_old=x.clone(), grad=torch.randn(x.shape, generator=g),
                       loss=loss, x_best=x.clone(), grad_best=torch.zeros_like(x), loss_best=loss_best,
                       step=loss.clone(), prev_loss=prev, increases=torch.full((m,), 2.0), best_at_check=loss.clone(),
                       reduced_at_check=torch.ones(m, dtype=torch.bool))

    logits = torch.randn(m, 4, generator=g)
    logits[0] = torch.tensor([1.0, 3.0, 3.0, 0.0])
    logits[1, 2] = float("nan")
    fused_state, reference_state, calm = state(), state(), state()
    fused = _bookkeep(fused_state, logits)
    assert _bookkeep(calm, torch.eye(4)[calm.y]) is None  # no row fooled
    monkeypatch.setattr(cpu_kernels, "AVAILABLE", False)
    reference = _bookkeep(reference_state, logits)
    assert _bookkeep(calm, torch.eye(4)[calm.y]) is None
    assert reference is not None and 5 < int(reference.sum()) < m and torch.equal(fused, reference)
    for name in ("x_best", "grad_best", "loss_best", "increases", "prev_loss"):
        ours, theirs = getattr(fused_state, name), getattr(reference_state, name)
        assert torch.equal(ours.nan_to_num(), theirs.nan_to_num()) and torch.equal(ours.isnan(), theirs.isnan()), name
    assert not torch.equal(reference_state.x_best, state().x_best)  # some rows improved


@pytest.mark.parametrize("loss", ["ce", "dlr-targeted"])
def test_apgd_linf_run_is_the_torch_run_bit_for_bit(monkeypatch, model, loss):
    """APGD's L-inf step and bookkeeping fused against the torch steps: the same examples and outcomes, bit for
    bit, on a run where points are fooled at different iterations (so the batch shrinks under both)."""
    from bench.data import load_dataset
    from bench.threats.aa_engine import rng
    from bench.threats.aa_engine.apgd import apgd

    data = load_dataset("digits", "test")
    x, y = data.x[:40], data.y[:40]
    keys = rng.point_keys(0, torch.arange(40), "apgd")
    kwargs = dict(norm="Linf", eps=0.1, keys=keys, loss=loss, n_iter=30, n_target_classes=3)
    fused = apgd(model, x, y, **kwargs)
    monkeypatch.setattr(cpu_kernels, "AVAILABLE", False)
    reference = apgd(model, x, y, **kwargs)
    assert 5 < int(reference[1].sum()) < 35
    assert torch.equal(fused[0], reference[0]) and torch.equal(fused[1], reference[1])


def test_dlr_targeted_loss_and_gradient_are_autograds_bit_for_bit(monkeypatch, model):
    """The targeted DLR loss and its gradient through the model, seeded at the logits by the kernel, against torch's
    loss and autograd through it: equal bit for bit, on rows where the label leads and where it does not; rows
    whose routing autograd decides by position (a tie, a NaN, the target as the label) leave it to autograd."""
    from bench.data import load_dataset
    from bench.threats.aa_engine.apgd import dlr_targeted_loss
    from bench.threats.aa_engine.model import input_grad

    data = load_dataset("digits", "test")
    x, y = data.x[:64].clone(), data.y[:64]
    x[::2] = (x[::2] + torch.randn(x[::2].shape, generator=torch.Generator().manual_seed(9))).clamp(0.0, 1.0)
    target = (y + 1 + torch.arange(64) % 9) % 10
    loss_fn = lambda z: dlr_targeted_loss(z, y, target)  # noqa: E731
    fused = input_grad(model, x, loss_fn, lambda z: cpu_kernels.dlr_targeted(z, y, target))
    reference = input_grad(model, x, loss_fn)
    with torch.no_grad():
        leads = model(x).argmax(1) == y
    assert 5 < int(leads.sum()) < 60 and float(reference[2].abs().sum()) > 0
    for ours, theirs in zip(fused, reference):
        assert torch.equal(ours, theirs)
    logits = torch.randn(6, 10, dtype=torch.float64)
    labels, targets = torch.zeros(6, dtype=torch.long), torch.ones(6, dtype=torch.long)
    assert cpu_kernels.dlr_targeted(logits, labels, targets) is not None  # float64 too
    for row, spoil in enumerate([lambda t: t.__setitem__((0, 5), t[0].max()),  # a tie at the top
                                 lambda t: t.__setitem__((0, 5), float("nan"))]):
        bad = logits.clone()
        spoil(bad)
        assert cpu_kernels.dlr_targeted(bad, labels, targets) is None
    assert cpu_kernels.dlr_targeted(logits, labels, labels) is None  # target == label
    assert cpu_kernels.dlr_targeted(logits[:, :3], labels, targets) is None  # fewer than 4 classes


def test_fab_targeted_plane_is_autograds_bit_for_bit(monkeypatch, model):
    """FAB-T's boundary value and gradient, seeded at the logits by the kernel, against autograd through the
    gathers: equal bit for bit, a target equal to the label (a zero gradient) and NaN logits included."""
    from bench.data import load_dataset
    from bench.threats.aa_engine.fab import _targeted_plane

    data = load_dataset("digits", "test")
    x, y = data.x[:48], data.y[:48]
    target = (y + torch.arange(48) % 10) % 10  # every fifth or so row aims at its own label
    logits = torch.randn(4, 5)
    logits[1, 2] = float("nan")
    f, seed = cpu_kernels.logit_difference(logits, torch.tensor([0, 1, 2, 3]), torch.tensor([1, 2, 2, 0]))
    assert f[1].isnan() and f[2] == 0 and torch.equal(seed.sum(1), torch.zeros(4))
    assert seed[0, 1] == 1 and seed[0, 0] == -1 and not seed[2].any()
    fused = _targeted_plane(model, x, y, target)
    monkeypatch.setattr(cpu_kernels, "AVAILABLE", False)
    reference = _targeted_plane(model, x, y, target)
    assert bool((target == y).any()) and float(reference[1].abs().sum()) > 0
    for ours, theirs in zip(fused, reference):
        assert torch.equal(ours, theirs)
