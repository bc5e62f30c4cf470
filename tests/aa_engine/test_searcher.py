"""The engine's opt-in searches, the model as the attacks call it (``searcher``): compiled (``compile`` in an
``engine: bench`` card), every call padded to a bucket so that torch.compile meets a few fixed shapes, each row's
output and gradient still its own; and a channels-last copy (``channels_last``). The plain model decides every
point, a sample checks the search, and each is the run's implementation identity, not its protocol."""
from __future__ import annotations

import copy
import shutil

import pytest
import torch

from bench.data import load_dataset
from bench.errors import CardError
from bench.identity import static_hash
from bench.threats import make_threat
from bench.threats.aa_engine import compiled
from bench.threats.aa_engine.compiled import Bucketed, bucket
from bench.threats.aa_engine.engine import autoattack, searcher
from bench.threats.aa_engine.model import ChannelsLast, MixedPrecision, frozen, input_grad
from bench.threats.aa_engine.perf import PassCounter, measure
from aa_engine.agreement import paired_tolerance
from conftest import threat

APGD_CE = dict(norm="Linf", eps=0.1, version="custom", attacks=["apgd-ce"], seed=0)


@pytest.fixture
def light_backend(monkeypatch):
    """AOTAutograd without inductor: the same tracing, forward and backward graphs, without minutes of C++
    compiling; dynamo's caches emptied before and after, so no test sees another's graphs."""
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def points(n: int):
    test = load_dataset("digits", "test")
    return test.x[:n], test.y[:n]


def test_buckets_are_few_and_at_most_a_third_of_a_padded_call_is_padding():
    sizes = [bucket(n) for n in range(1, 4097)]
    assert all(size >= n for n, size in zip(range(1, 4097), sizes))
    assert all(size - n <= size / 3 for n, size in zip(range(compiled.SMALLEST, 4097), sizes[compiled.SMALLEST - 1:]))
    assert sizes == sorted(sizes) and len(set(sizes)) == 17
    assert bucket(1) == 16 and bucket(17) == 24 and bucket(25) == 32 and bucket(4097) == 6144


@pytest.mark.parametrize("n", [1, 5, 16, 17, 40])
def test_each_row_keeps_its_own_output_and_gradient_and_none_is_a_view_of_the_inner_call(model, n):
    x, y = points(n)
    counter = PassCounter(model)
    bucketed = Bucketed(counter)
    logits, _, grad = input_grad(bucketed, x, lambda out: torch.nn.functional.cross_entropy(out, y, reduction="none"))
    ((rows, _),) = [(r, g) for _, r, g in counter.events]
    assert rows == bucket(n)
    padded = torch.cat([x, x[-1:].expand(rows - n, *x.shape[1:])])  # copies of the last real row
    expect_logits, _, expect_grad = input_grad(model, padded, lambda out: torch.nn.functional.cross_entropy(
        out, torch.cat([y, y[-1:].expand(rows - n)]), reduction="none"))
    assert torch.equal(logits, expect_logits[:n]) and torch.equal(grad, expect_grad[:n])
    plain_logits, _, plain_grad = input_grad(model, x, lambda out: torch.nn.functional.cross_entropy(
        out, y, reduction="none"))
    torch.testing.assert_close(logits, plain_logits, rtol=1e-5, atol=1e-5)  # padding rows touch no real row
    torch.testing.assert_close(grad, plain_grad, rtol=1e-5, atol=1e-6)
    assert logits.shape == (n, 10) and grad.shape == x.shape
    assert logits._base is None and grad._base is None  # copies: a CUDA graph's replay cannot overwrite them
    with torch.no_grad():
        assert Bucketed(model)(x[:0]).shape == (0, 10)  # an empty batch too


def test_a_compiled_run_meets_only_bucket_shapes_and_the_plain_model_decides(model, light_backend):
    x, y = points(40)
    counter = PassCounter(model).untraced()
    kw = dict(APGD_CE, positions=torch.arange(40))
    identity = static_hash(model)
    result = autoattack(counter, x, y, compile="default", **kw)
    assert static_hash(model) == identity and not hasattr(counter, "_is_torch_compile")  # compiling marks no model
    plain = autoattack(model, x, y, **kw)
    forward, backward = counter.between(*result.spans["apgd-ce"])
    buckets = {bucket(n) for n in range(1, 513)}  # restarts share a batch of up to 512 rows
    assert backward and set(backward) <= buckets  # every attack pass padded
    assert set(forward) <= buckets | {40}  # and 40: the plain model deciding the stage's points
    with torch.no_grad():
        right = model(x).argmax(1) == y
        still_right = model(result.x_adv).argmax(1) == y
    assert torch.equal(result.robust, right & still_right)  # decided by the plain model on the points returned
    assert abs(int(result.robust.sum()) - int(plain.robust.sum())) <= paired_tolerance(result.robust, plain.robust)
    assert int(result.robust.sum()) < int(right.sum())  # the compiled search does break points
    check = result.search_check
    assert check["points"] == 32 and check["robust"] == int(result.robust[:32].sum())
    (remark,) = result.remarks
    assert remark.startswith("attacks through torch.compile (mode default)") and "search_check" in remark
    assert not plain.remarks and not plain.search_check


def test_the_searches_compose_and_say_all(model, light_backend):
    x, _ = points(20)
    attacker, how = searcher(model, "bf16", "default", channels_last=True)
    assert how == ("attacks on a channels-last copy, attacks in bf16 (autocast), attacks through torch.compile "
                   "(mode default) on fixed-shape batches")
    padded = torch.cat([x, x[-1:].expand(bucket(20) - 20, *x.shape[1:])])
    with torch.no_grad():
        assert torch.equal(attacker(x), MixedPrecision(ChannelsLast(model), torch.bfloat16)(padded)[:20])
    assert searcher(model, "fp32", "off") == (model, None)


def rgb_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 4 * 4, 10)).eval()


def test_a_channels_last_copy_leaves_the_model_alone_and_returns_gradients_in_the_usual_layout():
    plain = rgb_model()
    x, y = torch.rand(6, 3, 8, 8), torch.arange(6)
    with frozen(plain):
        copy_ = ChannelsLast(plain)
        ours = input_grad(copy_, x, lambda out: torch.nn.functional.cross_entropy(out, y, reduction="none"))
        theirs = input_grad(plain, x, lambda out: torch.nn.functional.cross_entropy(out, y, reduction="none"))
    weight, copied = plain[0].weight, copy_.model[0].weight
    assert weight.is_contiguous() and not weight.is_contiguous(memory_format=torch.channels_last)
    assert copied.is_contiguous(memory_format=torch.channels_last) and not copied.is_contiguous()
    assert ours[2].is_contiguous()  # what the engine's steps and kernels expect
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    flat = torch.nn.Sequential(torch.nn.Linear(5, 3))
    assert ChannelsLast(flat)(torch.rand(2, 5)).shape == (2, 3)  # not images: called as they are


def test_a_channels_last_run_agrees_with_the_plain_one(model):
    x, y = points(40)
    kw = dict(APGD_CE, positions=torch.arange(40))
    plain, ours = autoattack(model, x, y, **kw), autoattack(model, x, y, channels_last=True, **kw)
    assert abs(int(ours.robust.sum()) - int(plain.robust.sum())) <= paired_tolerance(ours.robust, plain.robust)
    (remark,) = ours.remarks
    assert remark.startswith("attacks on a channels-last copy, every point decided by the plain model")
    assert ours.search_check["points"] == 32


def test_the_run_raises_dynamo_recompile_limit_so_no_bucket_runs_uncompiled(model, light_backend, monkeypatch):
    """Dynamo runs a function uncompiled once it has compiled it ``recompile_limit`` times: a run with more
    buckets than that would silently lose its speed. With the limit made an error, a run needing more graphs than
    a low default passes under the engine's raised limit, and fails without it."""
    x, y = points(40)
    kw = dict(norm="Linf", eps=0.1, version="standard", seed=0, positions=torch.arange(40))
    with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True):
        autoattack(model, x, y, compile="default", **kw)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert graphs > 2  # the run needed more graphs than the default left it
        torch._dynamo.reset()
        monkeypatch.setattr(compiled, "RECOMPILE_LIMIT", 2)
        with pytest.raises(Exception, match="recompile_limit|cache_size_limit"):
            autoattack(model, x, y, compile="default", **kw)


def test_compile_and_channels_last_are_opt_in_identity_not_protocol_and_need_our_engine():
    params = dict(norm="Linf", eps=0.1, version="custom", attacks=["apgd-ce"], engine="bench")
    _, plain = make_threat(threat("autoattack", **params))
    _, fast = make_threat(threat("autoattack", compile="reduce-overhead", **params))
    assert threat("autoattack", compile="reduce-overhead", **params).hash == threat("autoattack", **params).hash
    assert fast.implementation()["engine"]["compile"] == {"mode": "reduce-overhead", "smallest_bucket": 16}
    assert "compile" not in plain.implementation()["engine"]
    _, layout = make_threat(threat("autoattack", channels_last=True, **params))
    assert layout.implementation()["engine"]["channels_last"] is True
    assert "channels_last" not in plain.implementation()["engine"]
    assert threat("autoattack", channels_last=True, **params).hash == threat("autoattack", **params).hash
    with pytest.raises(CardError, match="channels_last: True needs engine: bench"):
        make_threat(threat("autoattack", norm="Linf", eps=0.1, channels_last=True))
    with pytest.raises(CardError, match="compile: default needs engine: bench"):
        make_threat(threat("autoattack", norm="Linf", eps=0.1, compile="default"))
    with pytest.raises(CardError):
        make_threat(threat("autoattack", compile="fastest", **params))


def test_perf_warms_a_compiled_engine_up_on_every_point_and_counts_padded_passes(model, light_backend):
    x, y = points(12)
    kw = {k: v for k, v in APGD_CE.items() if k != "seed"}
    m, plain = measure("bench-compiled", model, x, y, **kw), measure("bench", model, x, y, **kw)
    assert m.warm_up_points == 12 and m.error is None and plain.warm_up_points == 2
    (stage,), (plain_stage,) = m.stages, plain.stages
    assert set(stage.backward_calls) <= {bucket(n) for n in range(1, 513)}
    assert len(stage.backward_calls) == len(plain_stage.backward_calls) > 100  # every call counted, not the traced
    assert m.n == 12 and 0 <= m.robust <= 12


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="inductor needs a C++ "
                    "compiler on a CPU")
def test_inductor_compiles_the_search_users_get(model, monkeypatch):
    """The default backend, as a card's ``compile: default`` runs it on a CPU (about half a minute of compiling)."""
    monkeypatch.setattr(compiled, "BACKEND", "inductor")
    torch._dynamo.reset()
    x, y = points(8)
    kw = dict(APGD_CE, positions=torch.arange(8))
    try:
        result = autoattack(model, x, y, compile="default", **kw)
    finally:
        torch._dynamo.reset()
    plain = autoattack(model, x, y, **kw)
    assert abs(int(result.robust.sum()) - int(plain.robust.sum())) <= paired_tolerance(result.robust, plain.robust)
    assert result.search_check["points"] == 8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_outputs_and_gradients_survive_the_next_replays(model):
    """reduce-overhead replays CUDA graphs whose outputs live in memory the next replay overwrites: what the
    attacks get must be copies, equal to the plain model's."""
    plain = copy.deepcopy(model).cuda()
    x, y = (t.cuda() for t in points(40))

    def loss(out):
        return torch.nn.functional.cross_entropy(out, y, reduction="none")

    torch._dynamo.reset()
    try:
        attacker = compiled.compiled(plain, "reduce-overhead")
        first = input_grad(attacker, x, loss)
        kept = [t.clone() for t in first]
        for k in range(3):
            input_grad(attacker, x.roll(k + 1, 0), loss)
            with torch.no_grad():
                attacker(x.flip(0))
        assert all(torch.equal(a, b) for a, b in zip(first, kept))
        for ours, theirs in zip(first, input_grad(plain, x, loss)):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    finally:
        torch._dynamo.reset()
