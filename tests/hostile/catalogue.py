"""The hostile catalogue: cards, files and models that once produced a silent wrong number, a hang, a
traceback or code running without consent. Every threat family is run against the hostile models
(``FAMILY_CARDS`` must name a cheap card for each registered family, so a new family cannot skip it)."""
from __future__ import annotations

import torch
from torch import nn

# --- a cheap card per threat family, on digits -------------------------------------------------------
# "<cvae>" is replaced by a tiny CVAE card trained once per test session, "<source>" by a digits classifier card,
# "<pgd-card>" and "<learned-cvae-card>" by card files holding this catalogue's pgd and learned-cvae cards.
FAMILY_CARDS: dict[str, dict] = {
    "clean": {},
    "pgd": {"norm": "Linf", "eps": 0.1, "steps": 3},
    "autoattack": {"norm": "Linf", "eps": 0.1, "version": "custom", "attacks": ["apgd-ce"]},
    "learned-cvae": {"cvae": "<cvae>", "eps": 1.0, "steps": 3, "targets": 2, "samples": 10},
    "learned-cvae-pgd": {"cvae": "<cvae>", "eps": 1.0, "steps": 3},
    "learned-cvae-apgd": {"cvae": "<cvae>", "eps": 1.0, "steps": 3, "loss": "dlr-targeted", "targets": 2},
    "learned-cvae-random": {"cvae": "<cvae>", "eps": 1.0, "samples": 20},
    "learned-cvae-real-fit": {"cvae": "<cvae>", "eps": 1.0, "steps": 3, "targets": 2, "samples": 10,
                              "fit_steps": 3, "angles": 2},
    "learned-cvae-real-grid": {"cvae": "<cvae>", "eps": 1.0, "rotations": 3, "scales": 2, "shifts": 2},
    "learned-cvae-transfer": {"cvae": "<cvae>", "eps": 1.0, "source": "<source>", "steps": 3},
    "latent-smoothing": {"cvae": "<cvae>", "sigma": 0.5, "n0": 10, "n": 30},
    "latent-smoothing-attack": {"cvae": "<cvae>", "sigma": 0.5, "eps": 0.5, "steps": 2, "samples": 4, "n0": 10,
                                "n": 30},
    "perturbed": {"pairs": {"kind": "rts", "rotation": 20}},
    "set-quality": {"eps": 1.0, "steps": 3},
    "corruptions": {"suite": "cifar10-c", "corruptions": ["gaussian_noise", "contrast"], "severities": [1]},
    "ood": {"shifts": ["darker", "noise"], "strengths": {"darker": [0.5], "noise": [0.1]}},
    "pgd-bpda": {"norm": "Linf", "eps": 0.1, "steps": 3},
    "apgd-bpda": {"norm": "Linf", "eps": 0.1, "steps": 3},
    "pgd-transfer": {"norm": "Linf", "eps": 0.1, "steps": 3, "source": "<source>"},
    "vae-attack": {"objective": "elbo", "norm": "Linf", "eps": 0.1, "steps": 2},
    "vae-margin": {"r": 1.0, "samples": 10, "bisection": 2, "steps": 2},
    "vae-certified-elbo": {"eps": 0.05, "steps": 2},
    "vae-lipschitz-margin": {"r": 1.0},
    "ensemble": {"members": ["<pgd-card>", "<learned-cvae-card>"]},
}
PERTURBING = {"pgd", "autoattack", "learned-cvae", "learned-cvae-pgd", "learned-cvae-apgd", "learned-cvae-random",
              "learned-cvae-transfer", "learned-cvae-real-fit", "learned-cvae-real-grid", "latent-smoothing",
              "latent-smoothing-attack", "perturbed", "corruptions", "ood", "pgd-bpda", "apgd-bpda", "pgd-transfer",
              "ensemble"}
GRADIENT = {"pgd", "learned-cvae", "learned-cvae-real-fit", "learned-cvae-pgd", "learned-cvae-apgd",
            "latent-smoothing-attack", "pgd-bpda", "apgd-bpda", "ensemble"}

# --- a cheap digits card per classifier training recipe: its trained model meets the hostile models like any card
RECIPE_CARDS: dict[str, dict] = {
    "pgd-at": {"eps": 0.1, "steps": 2, "step_size": 0.05},
    "trades": {"eps": 0.1, "steps": 2, "step_size": 0.05, "beta": 6.0},
    "mart": {"eps": 0.1, "steps": 2, "step_size": 0.05, "beta": 6.0},
    "armor-kl": {"eps": 0.1, "steps": 2, "step_size": 0.05, "base": "trades", "radius": 0.05, "t": 0.5},
    "armor-alpha": {"eps": 0.1, "steps": 2, "step_size": 0.05, "base": "mart", "radius": 0.5, "alpha": 6.0},
}

# --- hostile cards: file name -> (text, what the error says) ------------------------------------------
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8)) + \
    "id: bomb\nfamily: clean\n"
HOSTILE_CARDS = {
    "alias-bomb.yaml": (ALIAS_BOMB, "aliases"),
    "dev-zero.yaml": ("id: zero\nfamily: clean\ninclude: /dev/zero\n", "not a regular file"),
    "folder-include.yaml": ("id: folder\nfamily: clean\ninclude: .\n", "not a regular file"),
    "huge.yaml": ("id: huge\nfamily: clean\ndescription: " + "x" * 300_000 + "\n", "larger than"),
    "latin1.yaml": (b"id: caf\xe9\nfamily: clean\n", "not UTF-8"),
    "inf-step.yaml": ("id: inf-step\nfamily: pgd\nparams: {norm: L2, eps: 1.0, steps: 5, step_size: .inf}\n",
                      "finite"),
    "nan-eps.yaml": ("id: nan-eps\nfamily: pgd\nparams: {norm: L2, eps: .nan, steps: 5}\n", "eps"),
    "deep-brackets.yaml": ("id: deep\nfamily: clean\nparams: {x: " + "[" * 5000 + "]" * 5000 + "}\n",
                           "nested more than"),
    "long-integer.yaml": ("id: long\nfamily: pgd\nparams: {norm: L2, eps: 1.0, steps: " + "9" * 5000 + "}\n",
                          "4300 digits|between 1 and"),
    "impossible-date.yaml": ("id: date\nfamily: clean\ndescription: 2024-13-45\n", "month must be in 1..12"),
    "huge-steps.yaml": ("id: huge-steps\nfamily: pgd\nparams: {norm: L2, eps: 1.0, steps: 1000000000000}\n",
                        "'steps': must be between 1 and 100,000"),
}


# --- hostile models: name -> (factory(inner), expected error for every family, or None) ----------------
class NaNLogits(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) * float("nan")


class TupleOutput(NaNLogits):
    def forward(self, x):
        return self.inner(x), x


class FlatOutput(NaNLogits):
    def forward(self, x):
        return self.inner(x).argmax(1).float()


class ElevenClasses(NaNLogits):
    def forward(self, x):
        out = self.inner(x)
        return torch.cat([out, out[:, :1]], 1)


class NaNOffTheGrid(NaNLogits):
    """Finite on the clean digits (multiples of 1/16), NaN on anything a perturbation makes."""

    def forward(self, x):
        off = (x * 16 - torch.round(x * 16)).abs().flatten(1).amax(1) > 1e-4
        out = self.inner(x)
        return torch.where(off.view(-1, 1), torch.full_like(out, float("nan")), out)


class Detached(NaNLogits):
    def forward(self, x):
        return self.inner(x).detach()


class Noisy(NaNLogits):
    def forward(self, x):
        return self.inner(x + 0.3 * torch.randn_like(x))


def float64(inner):
    import copy

    return copy.deepcopy(inner).double()


def meta(inner):
    import copy

    return copy.deepcopy(inner).to("meta")


HOSTILE_MODELS = {
    "nan-logits": (NaNLogits, "non-finite logits"),
    "tuple-output": (TupleOutput, "returned tuple"),
    "flat-output": (FlatOutput, "returned shape"),
    "eleven-classes": (ElevenClasses, "11 logits per image, but the dataset has 10 classes"),
    "float64": (float64, "float64"),
    "meta": (meta, "meta device"),
}
