"""Our AutoAttack: the official ensemble's stages and settings per version, run on the points still robust.

Each stage attacks only the points every earlier stage left standing (as the official), in chunks of
``batch_size`` points; every draw is keyed by the point's position in the split and the stage, so the chunking
(and the shard's size) changes no point's outcome. The model's parameters are frozen for the whole run. The
official's checks run on the same inputs and give the same warnings (``checks``). However the attacks call the
model (opt-in: bf16 or fp16, compiled, channels-last), the plain model in fp32 decides every point.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch
from torch import Tensor

from bench.progress import stage as progress
from bench.threats.aa_engine import checks, compiled, rng
from bench.threats.aa_engine.model import ChannelsLast, MixedPrecision, frozen

# bump whenever the engine's numbers may change (3: APGD's Linf step as the official's clamps; 4: FAB's step fused
# on CPUs, float64 inside)
ENGINE_REVISION = 4
VERSIONS = {"standard": ["apgd-ce", "apgd-t", "fab-t", "square"],
            "plus": ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"],
            "rand": ["apgd-ce", "apgd-dlr"]}


@dataclass
class Stage:
    name: str
    run: Callable  # (model, x, y, *, norm, eps, keys) -> (x_adv, fooled)
    targets: int = 0  # target classes of a targeted stage


def _apgd(**kwargs):
    from bench.threats.aa_engine.apgd import apgd

    return partial(apgd, **kwargs)


def _fab(**kwargs):
    from bench.threats.aa_engine.fab import fab

    return partial(fab, **kwargs)


def _square(**kwargs):
    from bench.threats.aa_engine.square import square

    return partial(square, **kwargs)


def stages(version: str, norm: str, attacks: list[str] | None, notes: list[str]) -> list[Stage]:
    """The official's stages and their settings (``AutoAttack._set_version`` and its constructor's defaults for
    ``custom``): standard runs one APGD-CE restart and 9 target classes, except for L1 (5 restarts, 5 target
    classes, the 3-2-1 radius schedule); plus runs 5 restarts of the untargeted attacks; rand averages 20
    gradients per step."""
    names = attacks if version == "custom" else VERSIONS[version]
    l1_standard = version == "standard" and norm == "L1"
    restarts = 1 if version in ("standard", "rand") and not l1_standard else 5
    eot = 20 if version == "rand" else 1
    fab_restarts = 1 if version == "standard" else 5
    apgd_targets = 5 if l1_standard else 9
    out = []
    for name in names:
        targets = {"apgd-t": apgd_targets, "fab-t": 9}.get(name, 0)
        if name in ("apgd-ce", "apgd-dlr"):
            run = _apgd(loss=name[5:], n_restarts=restarts, large_reps=l1_standard, eot=eot, notes=notes)
        elif name == "apgd-t":
            run = _apgd(loss="dlr-targeted", n_restarts=1, n_target_classes=targets, large_reps=l1_standard,
                        notes=notes)
        elif name == "fab-t":
            run = _fab(targeted=True, n_target_classes=targets, n_restarts=1)
            fab_restarts = 1  # the official sets its shared FAB's restarts to 1 for FAB-T, and a later FAB keeps it
        elif name == "fab":
            run = _fab(targeted=False, n_restarts=fab_restarts)
        else:
            run = _square(n_queries=5000, p_init=0.8)
        out.append(Stage(name, run, targets))
    return out


@dataclass
class Result:
    x_adv: Tensor  # the breaking stage's input where a point was broken, else the clean input
    robust: Tensor
    broken_by: dict[str, int] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)  # robust accuracy after each stage, "clean" first
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)  # each stage's start and end (time.time)
    notes: list[str] = field(default_factory=list)  # the official's checks
    remarks: list[str] = field(default_factory=list)  # the engine's own: how an opted-in search compares
    search_check: dict[str, int] = field(default_factory=dict)  # its counts (summed over a run's batches)


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CHECK_POINTS = 32  # points the ensemble runs again on the plain model when the attacks call another


def autoattack(model, x: Tensor, y: Tensor, *, norm: str, eps: float, version: str = "standard",
               attacks: list[str] | None = None, seed: int, positions: Tensor, batch_size: int | None = None,
               precision: str = "fp32", compile: str = "off", channels_last: bool = False) -> Result:
    """Run the ensemble on ``x`` (labels ``y``; ``positions``: each point's position in the split, which keys its
    draws with ``seed``). ``precision`` (opt-in bf16 or fp16): the attacks' passes run under autocast;
    ``compile`` (opt-in, a ``torch.compile`` mode): through the compiled model on fixed-shape batches
    (``compiled``); ``channels_last`` (opt-in): through a channels-last copy. Each only steers the search;
    whether a point is broken is always decided by the plain model in fp32. The first ``CHECK_POINTS`` points then
    run again with the attacks on the plain model: ``search_check`` counts them, the robust ones either way and the
    points where the two differ, and a remark says what that means."""
    notes: list[str] = []
    with frozen(model):
        plan = stages(version, norm, attacks, notes)
        size = batch_size or len(x)
        if version != "rand":
            notes += checks.randomized(model, x[:size], y[:size])
        found, n_classes = checks.probabilities(model, x[:size])
        notes += found + checks.dynamic(model, x[:size])
        notes += checks.classes(n_classes, {s.name: s.targets for s in plan})
        attacker, search = searcher(model, precision, compile, channels_last)
        if attacker is not model:
            progress(f"AutoAttack: {search}, every point decided by the plain model in fp32")
        with compiled.recompiles() if compile != "off" else nullcontext():
            result = _ensemble(plan, attacker, model, x, y, norm, eps, seed, positions, size)
        if attacker is not model:
            k = min(CHECK_POINTS, len(x))
            progress(f"AutoAttack: the first {k} points again on the plain model in fp32, to check the search")
            full = _ensemble(plan, model, model, x[:k], y[:k], norm, eps, seed, positions[:k], size)
            low = result.robust[:k]
            result.search_check = {"points": k, "robust": int(low.sum()), "robust_fp32": int(full.robust.sum()),
                                   "differ": int((low != full.robust).sum())}
            result.remarks.append(search_note(search, result.search_check["differ"] > 0))
        result.notes = notes + checks.square_success(result.accuracy)
    return result


def searcher(model, precision: str, compile: str, channels_last: bool = False) -> tuple:
    """The model as the attacks call it, and the words that say how (None where it is the plain model)."""
    how = []
    if channels_last:
        model = ChannelsLast(model)
        how.append("attacks on a channels-last copy")
    if PRECISIONS[precision] is not None:
        model = MixedPrecision(model, PRECISIONS[precision])
        how.append(f"attacks in {precision} (autocast)")
    if compile != "off":
        model = compiled.compiled(model, compile)
        how.append(f"attacks through torch.compile (mode {compile}) on fixed-shape batches")
    return model, ", ".join(how) or None


def search_note(search: str, differ: bool) -> str:
    """The run's remark on an opted-in search (the same words for every batch, so a run shows it once)."""
    head = (f"{search}, every point decided by the plain model in fp32; the first {CHECK_POINTS} points of each "
            f"batch ran again with the attacks on the plain model in fp32 (stats search_check:*)")
    if differ:
        return head + (": some of those points differ, so rerun without it (precision: fp32, compile: off, "
                       "channels_last: false) before relying on this")
    return head + ": none differ, a sample only: this search can still miss points the plain one breaks"


def _ensemble(plan: list[Stage], attacker, model, x: Tensor, y: Tensor, norm: str, eps: float, seed: int,
              positions: Tensor, size: int) -> Result:
    """The stages on the points still robust: ``attacker`` runs the attacks, ``model`` decides every point."""
    robust = _predict(model, x, size) == y
    result = Result(x.clone(), robust, accuracy={"clean": robust.float().mean().item()})
    for s in plan:
        todo = robust.nonzero()[:, 0]
        if not len(todo):
            break
        broken, began = 0, time.time()
        for chunk in todo.split(size):
            keys = rng.point_keys(seed, positions[chunk.cpu()].to(x.device), s.name)
            progress(f"AutoAttack {s.name}: {len(chunk)} points")
            x_adv, _ = s.run(attacker, x[chunk], y[chunk], norm=norm, eps=eps, keys=keys)
            fooled = _predict(model, x_adv, size) != y[chunk]  # as the official: this forward pass decides
            robust[chunk[fooled]] = False
            result.x_adv[chunk[fooled]] = x_adv[fooled]
            broken += int(fooled.sum())
        result.broken_by[s.name] = broken
        result.spans[s.name] = (began, time.time())
        result.accuracy[s.name] = robust.float().mean().item()
        progress(f"AutoAttack robust accuracy after {s.name.upper()}: {result.accuracy[s.name]:.2%}")
    return result


@torch.no_grad()
def _predict(model, x: Tensor, size: int) -> Tensor:
    return torch.cat([model(c).argmax(1) for c in x.split(size)])
