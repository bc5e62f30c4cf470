"""The official AutoAttack's checks on the model and the result (its ``checks.py``), with its conditions and
wording, so a run on our engine warns where a run on the official one would: a randomised or dynamic defence,
probabilities instead of logits, too few classes for the targeted attacks, zero gradients under DLR, and Square
breaking points the gradient attacks left standing (a sign of gradient masking)."""
from __future__ import annotations

import sys

import torch
from torch import Tensor

DOC = "See flags_doc.md for details."
_AUTOGRAD = ("grad", "backward", "_make_grads")


def _unit(logits: Tensor) -> Tensor:
    return logits / (logits.flatten(1).norm(dim=1, keepdim=True) + 1e-10)


def randomized(model, x: Tensor, y: Tensor, passes: int = 5, alpha: float = 1e-4) -> list[str]:
    """Outputs that change between identical passes."""
    with torch.no_grad():
        outs = [model(x) for _ in range(passes)]
    correct = [int((o.argmax(1) == y).sum()) for o in outs]
    units = [_unit(o) for o in outs]
    spread = max(((units[i] - units[j]).flatten(1).norm(dim=1).max().item()
                  for i in range(passes) for j in range(i + 1, passes)), default=0.0)
    if len(set(correct)) > 1 or spread > alpha:
        return [f'it seems to be a randomized defense! Please use version="rand". {DOC}']
    return []


def probabilities(model, x: Tensor, alpha: float = 1e-5) -> tuple[list[str], int]:
    """Outputs that look like a probability distribution, and the number of classes."""
    with torch.no_grad():
        out = model(x)
    if out.max() < 1 + alpha and out.min() > -alpha and bool(((out.sum(-1) - 1).abs() < alpha).all()):
        return [f"it seems that the output is a probability distribution, please be sure that the logits are used! "
                f"{DOC}"], out.shape[-1]
    return [], out.shape[-1]


def dynamic(model, x: Tensor) -> list[str]:
    """A forward pass that calls autograd itself (a defence that optimises at test time)."""
    calls = []

    def trace(frame, event, arg):
        if event == "call" and frame.f_code.co_name in _AUTOGRAD:
            calls.append(frame.f_code.co_name)

    old = sys.gettrace()
    sys.settrace(trace)
    try:
        model(x)
    finally:
        sys.settrace(old)
    return [f"it seems to be a dynamic defense! The evaluation with AutoAttack might be insufficient. {DOC}"] \
        if calls else []


def classes(n_classes: int, attacks: dict[str, int]) -> list[str]:
    """Too few classes for the DLR losses or for the number of target classes (``attacks``: each stage's name and
    its number of target classes). The official's wording, except that the FAB-T part names FAB-T's own count where
    the official names APGD-T's (they differ in L1 standard only: 9 and 5)."""
    apgd_targets, fab_targets = attacks.get("apgd-t", 0), attacks.get("fab-t", 0)
    msg = None
    if "apgd-dlr" in attacks or "apgd-t" in attacks:
        if n_classes <= 2:
            msg = f"with only {n_classes} classes it is not possible to use the DLR loss!"
        elif n_classes == 3:
            msg = f"with only {n_classes} classes it is not possible to use the targeted DLR loss!"
        elif "apgd-t" in attacks and apgd_targets + 1 > n_classes:
            msg = (f"it seems that more target classes ({apgd_targets}) than possible ({n_classes - 1}) are used in "
                   "APGD-T!")
    if "fab-t" in attacks and fab_targets + 1 > n_classes:
        if msg is None:
            msg = (f"it seems that more target classes ({fab_targets}) than possible ({n_classes - 1}) are used in "
                   "FAB-T!")
        else:
            msg += (f" Also, it seems that too many target classes ({fab_targets}) are used in FAB-T "
                    f"({n_classes - 1} possible)!")
    return [msg] if msg else []


def zero_gradients(grad: Tensor) -> list[str]:
    """Points whose loss has no gradient at all."""
    zero = int((grad.flatten(1).abs().sum(1) == 0).sum())
    return [f"there are {zero} points with zero gradient! This might lead to unreliable evaluation with "
            f"gradient-based attacks. {DOC}"] if zero else []


def square_success(accuracy: dict[str, float], alpha: float = 0.002) -> list[str]:
    """Square lowering robust accuracy below what every gradient attack left (``accuracy``: after each stage,
    ``clean`` first)."""
    if "square" not in accuracy or len(accuracy) <= 2:
        return []
    others = min(v for k, v in accuracy.items() if k != "square")
    if accuracy["square"] < others - alpha:
        return [f"Square Attack has decreased the robust accuracy of {others - accuracy['square']:.2%}. This might "
                "indicate that the robustness evaluation using AutoAttack is unreliable. Consider running Square "
                f"Attack with more iterations and restarts or an adaptive attack. {DOC}"]
    return []
