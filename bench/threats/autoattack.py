"""The ``autoattack`` family: AutoAttack (Croce & Hein, 2020), computed by the official package (pyautoattack)
or by our batched engine (``bench.threats.aa_engine``), chosen per card with ``engine``. Which engine answers is
the run's implementation identity, not its protocol: both answer the same question.

The adapter of the official package fixes the package's unsafe defaults: eps, norm, an integer seed and the device are
always passed; the dynamic-defence counter (module-global upstream) is reset for every batch; its
checks, logged as warnings, become run notes; and every adversarial point is re-checked here
(finite, inside the ball, in [0, 1], misclassified by our own forward pass) before it counts.
"""
from __future__ import annotations

import logging
import re
from typing import Literal

import torch
from pydantic import model_validator

from torch import Tensor

from bench.errors import BenchError, require
from bench.ops.draws import Draws
from bench.params import Eps, Params, check_linf_eps
from bench.progress import stage
from bench.threats.base import THREAT_FAMILIES, Batch, Target, installed_version
from bench.threats.step import Candidates, PerturbStep

AttackName = Literal["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
_PERTURBED = re.compile(r"^(\S+) - \d+/\d+ - (\d+) out of \d+ successfully perturbed")


# our engine's opt-ins and their defaults: each says how the code answers (implementation identity), never what is
# asked, so one list both refuses them without engine: bench and keeps them out of the protocol
OPT_INS = {"precision": "fp32", "compile": "off", "channels_last": False}


class AutoAttackParams(Params):
    norm: Literal["Linf", "L2", "L1"]
    eps: Eps
    version: Literal["standard", "plus", "rand", "custom"] = "standard"
    attacks: list[AttackName] | None = None  # only with version: custom
    engine: Literal["official", "bench"] = "official"  # which code computes it (not part of the protocol)
    # our engine only, opt-in (OPT_INS: none is protocol): the attacks' passes under autocast, through torch.compile
    # in this mode on fixed-shape batches (reduce-overhead: CUDA graphs), on a channels-last copy of the model; every
    # point is still decided by the plain model in fp32, and the first points of each batch run again on it, counted
    # in stats search_check:*
    precision: Literal["fp32", "bf16", "fp16"] = OPT_INS["precision"]
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = OPT_INS["compile"]
    channels_last: bool = OPT_INS["channels_last"]

    @model_validator(mode="after")
    def _check(self) -> "AutoAttackParams":
        check_linf_eps(self.norm, self.eps)
        if (self.version == "custom") != (self.attacks is not None):
            raise ValueError("list attacks: exactly when version is custom")
        if self.attacks is not None and len(set(self.attacks)) != len(self.attacks):
            raise ValueError("an attack is listed twice (each listed attack runs in full)")
        for name, default in OPT_INS.items():
            if getattr(self, name) != default and self.engine != "bench":
                raise ValueError(f"{name}: {getattr(self, name)} needs engine: bench (the official package calls the "
                                 f"model as it is, in fp32)")
        return self


def _carries_gradient(model, x) -> bool:
    with torch.enable_grad():
        return bool(model(x[:1].detach().clone().requires_grad_(True)).requires_grad)


CHECK_NOTE = "AutoAttack check: "  # the prefix of a run note that is one of AutoAttack's own checks
_STAGE = re.compile(r"^(initial accuracy|robust accuracy after \S+|\S+ - \d+/\d+ - \d+ out of \d+ successfully)")


class _Capture(logging.Handler):
    """Keeps the package's log records (its checks become run notes) and passes its stage lines on as progress."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        message = record.getMessage()
        if _STAGE.match(message):
            stage(f"AutoAttack {message}")


@THREAT_FAMILIES.register("autoattack")
class AutoAttack(PerturbStep):
    """Attacks every point of a batch (AutoAttack skips those it gets wrong clean by itself). The official package
    is seeded with the batch's seed (its randomness is its own, not per point); our engine draws per point."""

    Params = AutoAttackParams
    params: AutoAttackParams

    @property
    def point_draws(self) -> bool:
        """Our engine keys every draw by point; the official package seeds itself per batch."""
        return self.params.engine == "bench"

    @property
    def aligned_draws(self) -> bool:
        return self.params.engine == "bench"

    @classmethod
    def protocol(cls, params: AutoAttackParams) -> dict:
        """The question asked, without the engine that answers it (that is the run's implementation identity)."""
        return params.model_dump(mode="json", exclude={"engine", *OPT_INS})

    def implementation(self) -> dict:
        if self.params.engine == "official":
            return super().implementation()
        from bench.threats.aa_engine import compiled, cpu_kernels
        from bench.threats.aa_engine.engine import ENGINE_REVISION

        engine = {"name": "bench", "revision": ENGINE_REVISION}
        kernels = cpu_kernels.name()
        if kernels:  # the fused CPU steps (FAB's to float rounding, not bit for bit, the torch step's)
            engine["cpu_kernels"] = kernels
        if self.params.precision != "fp32":
            engine["precision"] = self.params.precision
        if self.params.compile != "off":  # torch's version is in every run's identity already
            engine["compile"] = {"mode": self.params.compile, "smallest_bucket": compiled.SMALLEST}
        if self.params.channels_last:
            engine["channels_last"] = True
        return {"revision": self.revision, "engine": engine}

    @classmethod
    def backends(cls) -> dict[str, str]:
        return {"pyautoattack": installed_version("pyautoattack")}

    def attacked(self, batch: Batch) -> Tensor:
        return torch.ones_like(batch.clean["clean_correct"])

    def perturb(self, target: Target, x: Tensor, y: Tensor, draws: Draws) -> Candidates:
        if self.params.engine == "bench":
            return self._engine(target, x, y, draws)
        return self._official(target, x, y, draws)

    def _engine(self, target: Target, x: Tensor, y: Tensor, draws) -> Candidates:
        from bench.threats.aa_engine.engine import autoattack

        p = self.params
        self._require_gradient(target.module, x)
        result = autoattack(target.module, x, y, norm=p.norm, eps=p.eps, version=p.version, attacks=p.attacks,
                            seed=draws.seed, positions=draws.keys, precision=p.precision, compile=p.compile,
                            channels_last=p.channels_last)
        stats = {f"broken_by:{name}": count for name, count in result.broken_by.items()}
        stats.update({f"search_check:{name}": count for name, count in result.search_check.items()})
        return Candidates(result.x_adv, stats=stats, notes=[f"{CHECK_NOTE}{n}" for n in result.notes] + result.remarks)

    def _require_gradient(self, model, x: Tensor) -> None:
        p = self.params
        if (p.version != "custom" or set(p.attacks) - {"square"}) and not _carries_gradient(model, x):
            raise BenchError("the model's outputs carry no gradient (detached or computed without autograd), so "
                             "AutoAttack's gradient attacks cannot run: this is gradient masking by construction",
                             "attack it with the gradient-free Square attack (version: custom, attacks: [square]) "
                             "or a transfer attack, and do not rank it on white-box numbers")

    def _official(self, target: Target, x: Tensor, y: Tensor, draws: Draws) -> Candidates:
        package = require("pyautoattack", "the autoattack threat", "pip install pyautoattack==0.2.0")
        checks = require("pyautoattack.checks", "the autoattack threat", "pip install pyautoattack==0.2.0")
        p, model = self.params, target.module
        self._require_gradient(model, x)
        for key in checks.funcs:  # upstream never resets it: one dynamic model would taint every later one
            checks.funcs[key] = 0
        logger = logging.getLogger("auto-attack")
        capture, old_level, old_propagate = _Capture(), logger.level, logger.propagate
        logger.addHandler(capture)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False  # its warnings reach the user once, as run notes (not also through logging's last
        # resort); `bench --verbose` gives the logger a handler of its own that prints its whole log
        try:
            aa = package.AutoAttack(model, eps=p.eps, norm=p.norm, seed=draws.seed, version=p.version,
                                    attacks=p.attacks, device=x.device)
            x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(x))
        finally:
            logger.removeHandler(capture)
            logger.setLevel(old_level)
            logger.propagate = old_propagate
        stats: dict[str, int] = {}
        for record in capture.records:
            match = _PERTURBED.match(record.getMessage())
            if match:
                stats[f"broken_by:{match[1]}"] = stats.get(f"broken_by:{match[1]}", 0) + int(match[2])
        notes = [f"{CHECK_NOTE}{r.getMessage()}" for r in capture.records if r.levelno >= logging.WARNING]
        return Candidates(x_adv, stats=stats, notes=notes)

