"""Our AutoAttack engine as the ``autoattack`` family runs it (``engine: bench``), against the official package on
the same model and points: the same robust accuracy and the same per-stage breaks within paired sampling error, the
official's checks as run notes, and outcomes that do not depend on how the points are batched."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from bench.errors import CardError
from bench.run import evaluate
from bench.store import Store
from bench.threats import make_threat
from aa_engine.agreement import paired_tolerance
from conftest import threat
from test_attacks import GradientInForward, NoisyModel

pytest.importorskip("pyautoattack")
ROWS = "SELECT index, clean_correct, robust FROM rows WHERE run_id = ? ORDER BY index"


def both(model, tmp_path, n: int, **params):
    kw = dict(dataset="digits", n=n, batch_size=n, results=tmp_path, progress=False)
    official = evaluate(model, threat("autoattack", "aa-official", **params), **kw)
    ours = evaluate(model, threat("autoattack", "aa-bench", engine="bench", **params), **kw)
    store = Store(tmp_path)
    return official, ours, store.query(ROWS, [official.run_id]), store.query(ROWS, [ours.run_id])


@pytest.mark.parametrize("norm, eps", [("Linf", 0.1), ("L2", 0.5)])
def test_standard_autoattack_agrees_with_the_official_package(digits_model, tmp_path, norm, eps):
    official, ours, rows_o, rows_b = both(digits_model, tmp_path, 60, norm=norm, eps=eps)
    assert 0.1 < official.robust_acc < 0.8, "the test needs a radius where some points survive and some break"
    a, b = torch.tensor(rows_o.robust.values), torch.tensor(rows_b.robust.values)
    assert abs(int(a.sum()) - int(b.sum())) <= paired_tolerance(a, b)
    stages = {f"broken_by:{s}" for s in ("apgd-ce", "apgd-t", "fab-t", "square")}
    assert set(ours.stats) == set(official.stats) == stages
    ce_official, ce_ours = official.stats["broken_by:apgd-ce"], ours.stats["broken_by:apgd-ce"]
    assert abs(ce_official - ce_ours) <= 3.5 * math.sqrt(ce_official + ce_ours) / 2 + 2
    assert official.protocol == ours.protocol and official.run_id != ours.run_id
    assert any("other engine" in note for note in ours.notes)


def test_l1_standard_runs_its_radius_schedule_and_agrees(digits_model, tmp_path):
    official, ours, rows_o, rows_b = both(digits_model, tmp_path, 60, norm="L1", eps=3.0, version="custom",
                                          attacks=["apgd-ce", "apgd-t"])
    a, b = torch.tensor(rows_o.robust.values), torch.tensor(rows_b.robust.values)
    assert abs(int(a.sum()) - int(b.sum())) <= paired_tolerance(a, b)


def test_the_engine_is_identity_not_protocol():
    _, official = make_threat(threat("autoattack", norm="Linf", eps=0.1))
    _, ours = make_threat(threat("autoattack", norm="Linf", eps=0.1, engine="bench"))
    assert threat("autoattack", norm="Linf", eps=0.1).hash == threat("autoattack", norm="Linf", eps=0.1,
                                                                     engine="bench").hash
    assert official.implementation() != ours.implementation()
    assert ours.implementation()["engine"]["name"] == "bench" and "backends" not in ours.implementation()


def test_a_points_outcome_does_not_depend_on_the_batch_size(digits_model, tmp_path):
    params = dict(norm="Linf", eps=0.1, version="custom", attacks=["apgd-ce", "apgd-t"], engine="bench")
    kw = dict(dataset="digits", n=60, results=tmp_path, progress=False)
    whole = evaluate(digits_model, threat("autoattack", **params), batch_size=60, **kw)
    parts = evaluate(digits_model, threat("autoattack", **params), batch_size=25, **kw)
    store = Store(tmp_path)
    assert store.query(ROWS, [whole.run_id]).equals(store.query(ROWS, [parts.run_id]))
    assert whole.stats == parts.stats


def test_the_officials_checks_become_run_notes(digits_model, tmp_path):
    cheap = dict(norm="Linf", eps=0.1, version="custom", attacks=["apgd-ce"], engine="bench")
    kw = dict(dataset="digits", n=20, batch_size=20, results=tmp_path, progress=False)
    assert any("randomized" in n for n in evaluate(NoisyModel(digits_model), threat("autoattack", **cheap),
                                                   **kw).notes)
    assert any("dynamic defense" in n for n in evaluate(GradientInForward(digits_model),
                                                        threat("autoattack", **cheap), **kw).notes)
    plain = evaluate(digits_model, threat("autoattack", **cheap), **kw)
    assert not any("randomized" in n or "dynamic" in n for n in plain.notes)


def test_the_engine_leaves_the_callers_rng_and_the_weights_alone(digits_model, tmp_path):
    grads = [None if p.grad is None else p.grad.clone() for p in digits_model.parameters()]
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    evaluate(digits_model, threat("autoattack", norm="Linf", eps=0.1, version="custom", attacks=["apgd-ce"],
                                  engine="bench"), dataset="digits", n=20, results=tmp_path, progress=False)
    assert torch.equal(torch.rand(3), expected)
    assert all(p.requires_grad for p in digits_model.parameters())  # unfrozen again
    assert all((g is None and p.grad is None) or (g is not None and torch.equal(g, p.grad))
               for g, p in zip(grads, digits_model.parameters()))  # no weight gradient computed


@pytest.mark.parametrize("n_classes", [2, 3, 5, 9, 10])
@pytest.mark.parametrize("version, norm", [("standard", "Linf"), ("standard", "L1"), ("plus", "L2"),
                                           ("rand", "Linf")])
def test_the_class_count_check_words_what_the_official_does(n_classes, version, norm):
    import logging

    from pyautoattack.checks import check_n_classes

    from bench.threats.aa_engine import checks
    from bench.threats.aa_engine.engine import stages

    plan = stages(version, norm, None, [])
    records: list[str] = []
    logger = logging.getLogger("test-class-count")
    logger.addHandler(type("H", (logging.Handler,), {"emit": lambda self, r: records.append(r.getMessage())})())
    logger.propagate = False
    targets = {s.name: s.targets for s in plan}
    check_n_classes(n_classes, list(targets), targets.get("apgd-t", 9), targets.get("fab-t", 9), logger=logger)
    ours = checks.classes(n_classes, targets)
    if targets.get("apgd-t", 9) == targets.get("fab-t", 9):
        assert ours == records
    else:  # the official names APGD-T's count (5) for FAB-T's 9 targets; ours names FAB-T's own
        assert [m.replace("(9) are used in FAB-T", "(5) are used in FAB-T").replace(
            "classes (9) than possible", "classes (5) than possible") for m in ours] == records
        assert all("FAB-T" not in m or "(9)" in m for m in ours)


class AutocastLies(torch.nn.Module):
    """Right in fp32, wrong under autocast (every logit shifted by one class): a model on which the attacks' search
    in lower precision 'breaks' every point at once."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return out.roll(1, dims=1) if torch.is_autocast_enabled(x.device.type) else out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("norm, eps", [("Linf", 0.1), ("L2", 0.5)])
def test_on_cuda_the_engine_leaves_the_points_the_cpu_run_leaves(digits_model, norm, eps):
    """The same draws on both devices (int64 counters); the steps differ (on the CPU the numba kernels, on CUDA
    the torch steps) and so does the devices' float rounding, which may flip a near-tie: within paired sampling
    error, and every example inside the threat model."""
    from bench.data import load_dataset
    from bench.threats.aa_engine.engine import autoattack
    from bench.threats.aa_engine.geometry import norms

    test = load_dataset("digits", "test")
    x, y = test.x[:60], test.y[:60]
    kw = dict(norm=norm, eps=eps, seed=0, positions=torch.arange(60))
    cpu = autoattack(digits_model, x, y, **kw)
    gpu = autoattack(copy.deepcopy(digits_model).cuda(), x.cuda(), y.cuda(), **kw)
    a, b = cpu.robust, gpu.robust.cpu()
    assert 0 < int(a.sum()) < len(x) and set(gpu.broken_by) == set(cpu.broken_by)
    assert abs(int(a.sum()) - int(b.sum())) <= paired_tolerance(a, b) and (a == b).float().mean() >= 0.9
    assert (norms(gpu.x_adv.cpu() - x, norm) <= eps * (1 + 1e-5) + 1e-6).all()


def test_mixed_precision_is_opt_in_identity_never_decides_and_is_checked_against_fp32(digits_model):
    """bf16 attacks: the implementation names the precision (the protocol does not); every point is decided by the
    model in fp32, so a search fooled by autocast breaks nothing; the first points run again in fp32 and a note
    says where the two differ."""
    from bench.data import load_dataset
    from bench.threats.aa_engine.engine import autoattack

    params = dict(norm="Linf", eps=0.1, version="custom", attacks=["apgd-ce"], engine="bench")
    _, fp32 = make_threat(threat("autoattack", **params))
    _, bf16 = make_threat(threat("autoattack", precision="bf16", **params))
    assert threat("autoattack", precision="bf16", **params).hash == threat("autoattack", **params).hash
    assert bf16.implementation()["engine"]["precision"] == "bf16" and "precision" not in fp32.implementation()["engine"]
    with pytest.raises(CardError, match="precision: bf16 needs engine: bench"):
        make_threat(threat("autoattack", norm="Linf", eps=0.1, precision="bf16"))

    test = load_dataset("digits", "test")
    x, y = test.x[:40], test.y[:40]
    kw = dict(norm="Linf", eps=0.1, version="custom", attacks=["apgd-ce"], seed=0, positions=torch.arange(40))
    with torch.no_grad():
        right = digits_model(x).argmax(1) == y
    lied_to = autoattack(AutocastLies(digits_model), x, y, precision="bf16", **kw)
    with torch.no_grad():
        still_right = digits_model(lied_to.x_adv).argmax(1) == y
    assert torch.equal(lied_to.robust, right & still_right)  # broken only where the fp32 model is wrong
    honest = autoattack(digits_model, x, y, **kw)
    assert int(honest.robust.sum()) < int(lied_to.robust.sum())  # the fooled search found less than fp32's
    (note,) = lied_to.remarks
    assert note.startswith("attacks in bf16 (autocast), every point decided by the plain model") and "rerun" in note
    check = lied_to.search_check
    assert check["points"] == 32 and check["robust"] == int(lied_to.robust[:32].sum())
    assert check["differ"] >= check["robust"] - check["robust_fp32"] > 0  # fp32 breaks what the lied-to search missed
    assert not any("bf16" in n for n in lied_to.notes)  # the official's checks stay its own
    same = autoattack(digits_model, x, y, precision="bf16", **kw)
    assert same.remarks[0].startswith("attacks in bf16") and not honest.remarks and not honest.search_check
    assert abs(int(same.robust.sum()) - int(honest.robust.sum())) <= paired_tolerance(same.robust, honest.robust)


def test_a_run_of_another_engine_revision_is_stale_not_another_engine(digits_model, tmp_path, monkeypatch):
    """The note beside a new run names why an earlier run of the same question was not reused: another engine
    (official against bench) is said so; the same engine at another revision is stale code."""
    import bench.threats.aa_engine.engine as engine

    kw = dict(dataset="digits", n=8, batch_size=8, results=tmp_path, progress=False)
    card = threat("autoattack", "aa-bench", engine="bench", norm="Linf", eps=0.1, version="custom",
                  attacks=["apgd-ce"])
    first = evaluate(digits_model, card, **kw)
    monkeypatch.setattr(engine, "ENGINE_REVISION", engine.ENGINE_REVISION + 1)
    second = evaluate(digits_model, card, **kw)
    assert second.run_id != first.run_id
    notes = [n for n in second.notes if first.run_id in n]
    assert notes and "stale (made by other code)" in notes[0] and "other engine" not in notes[0]
