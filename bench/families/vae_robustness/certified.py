"""A certified lower bound on a VAE's ELBO over an L-inf ball (Condessa & Kolter's quantity; the algebra is
derived in ../shared/notes/vae-robustness.md, section 6.1, not copied from the paper), and the
``vae-certified-elbo`` family that reports it beside the clean and the attacked ELBO.

For x' in B(x) = {||x' - x||_inf <= eps} cap [0, 1]^D and the model's shared noise vectors e_k:

1. IBP through the encoder bounds mu and log sigma^2 (``ibp.py``);
2. the KL is bounded above exactly over that box (each term is convex in its own variable);
3. for each e_k, z lies in a box, and IBP through the decoder bounds its output;
4. the per-pixel log-likelihood is bounded below over the pixel's interval and the output's interval
   (Bernoulli: x l - softplus(l) is linear in x and concave in l, so its minimum is at a corner; Gaussian:
   the largest squared distance between the two intervals);
5. certified ELBO = mean_k sum_i (lowest log-likelihood) - (highest KL).

With the same e_k as ``elbo()``, it is below ELBO(x') for every x' in the ball, and equals ELBO(x) at eps 0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from bench.errors import NotApplicable
from bench.families.vae_robustness.attacks import VAEAttack, VAEAttackParams, not_a_vae
from bench.families.vae_robustness.ibp import interval
from bench.metrics import Metric
from bench.params import Params, Steps
from bench.tasks.generative import check_elbo_order, model_name
from bench.threats.base import THREAT_FAMILIES, Batch, Outcome, Target, Threat


def kl_upper(mu_l: Tensor, mu_u: Tensor, v_l: Tensor, v_u: Tensor) -> Tensor:
    """The largest KL(N(mu, e^v) || N(0, I)) over the box, per row."""
    mean_term = torch.maximum(mu_l.pow(2), mu_u.pow(2))
    var_term = torch.maximum(v_l.exp() - v_l, v_u.exp() - v_u)
    return 0.5 * (mean_term + var_term - 1).sum(1)


def bernoulli_ll_lower(x_l: Tensor, x_u: Tensor, out_l: Tensor, out_u: Tensor) -> Tensor:
    """The lowest x * l - softplus(l) over x in [x_l, x_u], l in [out_l, out_u], summed per image."""
    corners = [x * out - F.softplus(out) for x in (x_l, x_u) for out in (out_l, out_u)]
    return torch.stack(corners).amin(0).flatten(1).sum(1)


def gaussian_ll_lower(x_l: Tensor, x_u: Tensor, out_l: Tensor, out_u: Tensor, sigma: float) -> Tensor:
    g_l, g_u = torch.sigmoid(out_l), torch.sigmoid(out_u)
    worst = torch.maximum((x_u - g_l).pow(2), (g_u - x_l).pow(2))
    var = sigma ** 2
    return (-worst / (2 * var) - 0.5 * math.log(2 * math.pi * var)).flatten(1).sum(1)


@torch.no_grad()
def certified_elbo(model: nn.Module, x: Tensor, eps: float) -> Tensor:
    """A lower bound on model.elbo(x') for every x' within eps of x in L-inf (and in [0, 1])."""
    return elbo_lower_bound(model, x, eps, model.noise)


def elbo_lower_bound(model: nn.Module, x: Tensor, eps: float, noise: Tensor) -> Tensor:
    """The bound for the noise vectors ``noise`` (K, latent), differentiable in the model's parameters (what
    proVAE trains on)."""
    x_l, x_u = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    heads_l, heads_u = interval(model.heads, *interval(model.encoder, x_l, x_u))
    latent = heads_l.shape[1] // 2
    mu_l, mu_u = heads_l[:, :latent], heads_u[:, :latent]
    v_l, v_u = heads_l[:, latent:].clamp(-12, 8), heads_u[:, latent:].clamp(-12, 8)  # the encoder's clamp
    s_l, s_u = (0.5 * v_l).exp(), (0.5 * v_u).exp()
    ll = []
    for e in noise:
        z_l = mu_l + torch.minimum(s_l * e, s_u * e)
        z_u = mu_u + torch.maximum(s_l * e, s_u * e)
        out_l, out_u = interval(model.decoder, z_l, z_u)
        if model.likelihood == "bernoulli":
            ll.append(bernoulli_ll_lower(x_l, x_u, out_l, out_u))
        else:
            ll.append(gaussian_ll_lower(x_l, x_u, out_l, out_u, model.sigma))
    return torch.stack(ll).mean(0) - kl_upper(mu_l, mu_u, v_l, v_u)


class CertifiedParams(Params):
    eps: float = Field(ge=0, allow_inf_nan=False)  # L-inf radius (0: the certificate equals the clean ELBO)
    steps: Steps = 40  # the ELBO attack beside the certificate
    restarts: Steps = 1


@THREAT_FAMILIES.register("vae-certified-elbo")
class VAECertifiedELBO(Threat):
    """Clean, attacked (ELBO-lowering PGD) and certified ELBO at one L-inf radius; the headline is the
    certified ELBO (higher is better)."""

    tasks = ("generative",)
    Params = CertifiedParams
    params: CertifiedParams
    metrics = (Metric("certified_elbo", "certified_elbo", "certified ELBO lower bound (nats)"),
               Metric("adv_elbo", "adv_elbo", "ELBO under attack (nats)"),
               Metric("certificate_gap", "certificate_gap", "attacked minus certified ELBO (nats)",
                      higher_is_better=False))
    headline = "certified_elbo"

    def unsupported(self, model: nn.Module) -> NotApplicable | None:
        if not all(hasattr(model, name) for name in ("encoder", "heads", "decoder", "noise", "likelihood")):
            return NotApplicable("is not a conv-vae; the certified ELBO bounds conv-vae models",
                                 "use an architecture: conv-vae card (vae-lipschitz-margin certifies a lipschitz-vae)")
        return not_a_vae(model)

    def attack(self, target: Target, batch: Batch) -> Outcome:
        p, model = self.params, target.module
        self.require_supported(model, model_name(model))
        certified = certified_elbo(model, batch.x, p.eps)
        if p.eps > 0:
            elbo_attack = VAEAttack(VAEAttackParams(objective="elbo", norm="Linf", eps=p.eps, steps=p.steps,
                                                    restarts=p.restarts))
            adv = elbo_attack.attack(target, batch).values["adv_elbo"]
        else:
            adv = batch.clean["clean_elbo"]
        check_elbo_order(model_name(model), batch.clean["clean_elbo"], adv, certified)
        return Outcome(values={"certified_elbo": certified, "adv_elbo": adv, "certificate_gap": adv - certified})
