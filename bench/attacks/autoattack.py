"""The ``autoattack`` family: the official AutoAttack (Croce & Hein, 2020) through pyautoattack.

The adapter fixes the package's unsafe defaults: eps, norm, an integer seed and the device are
always passed; the dynamic-defence counter (module-global upstream) is reset for every batch; its
checks, logged as warnings, become run notes; and every adversarial point is re-checked here
(inside the ball, in [0, 1], misclassified by our own forward pass) before it counts.
"""
from __future__ import annotations

import logging
import re
from typing import Literal

import torch
from pydantic import model_validator
from torch import Tensor, nn

from bench.attacks.base import Outcome, Threat, ThreatParams, predict
from bench.attacks.card import Eps, check_linf_eps
from bench.errors import BenchError

AttackName = Literal["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
_PERTURBED = re.compile(r"^(\S+) - \d+/\d+ - (\d+) out of \d+ successfully perturbed")


class AutoAttackParams(ThreatParams):
    norm: Literal["Linf", "L2", "L1"]
    eps: Eps
    version: Literal["standard", "plus", "rand", "custom"] = "standard"
    attacks: list[AttackName] | None = None  # only with version: custom

    @model_validator(mode="after")
    def _check(self) -> "AutoAttackParams":
        check_linf_eps(self.norm, self.eps)
        if (self.version == "custom") != (self.attacks is not None):
            raise ValueError("list attacks: exactly when version is custom")
        return self


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _distance(delta: Tensor, norm: str) -> Tensor:
    flat = delta.flatten(1)
    return {"Linf": lambda: flat.abs().amax(1), "L2": lambda: flat.norm(dim=1), "L1": lambda: flat.abs().sum(1)}[norm]()


class AutoAttack(Threat):
    family = "autoattack"
    Params = AutoAttackParams

    def attack(self, model: nn.Module, x: Tensor, y: Tensor, clean_pred: Tensor, seed: int,
               index: Tensor) -> Outcome:
        from pyautoattack import AutoAttack as OfficialAutoAttack
        from pyautoattack import checks

        p = self.params
        for key in checks.funcs:  # upstream never resets it: one dynamic model would taint every later one
            checks.funcs[key] = 0
        logger = logging.getLogger("auto-attack")
        capture, old_level = _Capture(), logger.level
        logger.addHandler(capture)
        logger.setLevel(logging.DEBUG)
        try:
            aa = OfficialAutoAttack(model, eps=p.eps, norm=p.norm, seed=seed, version=p.version,
                                    attacks=p.attacks, device=x.device)
            x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(x))
        finally:
            logger.removeHandler(capture)
            logger.setLevel(old_level)
        self._check_budget(x, x_adv)
        adv_pred = predict(model, x_adv)
        correct = clean_pred == y
        stats: dict[str, int] = {}
        for record in capture.records:
            match = _PERTURBED.match(record.getMessage())
            if match:
                stats[f"broken_by:{match[1]}"] = stats.get(f"broken_by:{match[1]}", 0) + int(match[2])
        notes = [f"AutoAttack check: {r.getMessage()}" for r in capture.records if r.levelno >= logging.WARNING]
        return Outcome(robust=correct & (adv_pred == y), adv_pred=torch.where(correct, adv_pred, clean_pred),
                       stats=stats, notes=notes)

    def _check_budget(self, x: Tensor, x_adv: Tensor) -> None:
        p = self.params
        dist = _distance(x_adv - x, p.norm)
        if bool((dist > p.eps * (1 + 1e-4) + 1e-6).any()) or bool(((x_adv < 0) | (x_adv > 1)).any()):
            raise BenchError(f"AutoAttack returned points outside the {p.norm} ball of radius {p.eps} or the "
                             f"[0, 1] box (max distance {dist.max().item():.6g})",
                             "this is a bug in the attack, not the model: report it with the model and threat")
