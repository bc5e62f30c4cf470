"""Record auto_LiRPA's IBP and CROWN bounds for a tiny fixed-weight conv-vae, so CI compares bench's own bounds
(``ibp.py``, ``crown.py``) with an independent implementation without installing it (``test_lirpa_reference.py``).

    python tests/vae_robustness/lirpa_reference.py        # in a venv with auto_LiRPA 0.7.1, see below

The network has ConvVAE's layers (side 28, width 2, latent 4; weights from seed 0, stored in the fixture under
ConvVAE's parameter names): encoder + heads (Conv2d, ReLU, Conv2d, ReLU, Flatten, Linear) over L-inf boxes
around two sparse images at two radii, clamped to [0, 1], and the decoder (Linear, ReLU, Unflatten,
ConvTranspose2d, ReLU, ConvTranspose2d) over boxes around two latent codes at two half-widths. For each, the
bounds of every affine layer's output (the inputs of the ReLUs and the output) by ``method="IBP"`` and
``method="CROWN"`` with auto_LiRPA's default options (adaptive ReLU lower slope, intermediate bounds by
CROWN where IBP finds a neuron unstable, IBP elsewhere), in float32 as auto_LiRPA computes them.

Environment (auto_LiRPA's releases on the package index pin torch < 1.13; its repository's 0.7.1 runs on
torch 2.14): fetch Verified-Intelligence/auto_LiRPA (the commit in ``COMMIT``), then

    git --git-dir=<mirror> archive <commit> | tar -x -C /tmp/lirpa
    python3.11 -m venv /tmp/lirpa-venv
    /tmp/lirpa-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 "numpy<2" appdirs packaging pyyaml tqdm graphviz
    /tmp/lirpa-venv/bin/pip install --no-deps --no-build-isolation /tmp/lirpa
    /tmp/lirpa-venv/bin/python tests/vae_robustness/lirpa_reference.py
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lirpa_reference.npz"
COMMIT = "a050a3d61f4cb68b108fa7f07dcb3e4d7ef304df"  # Verified-Intelligence/auto_LiRPA, "May 2026 release" (0.7.1)
SIDE, WIDTH, LATENT = 28, 2, 4
EPS = (0.02, 0.1)
HALF_WIDTHS = (0.1, 0.5)
METHODS = ("IBP", "CROWN", "CROWN-IBP-min")
ENCODER_AFFINE, DECODER_AFFINE = (0, 2, 5), (0, 3, 5)  # positions of the affine layers among the leaves


def networks() -> tuple[nn.Sequential, nn.Sequential]:
    """Encoder + heads and decoder, with ConvVAE's layers and seed-0 weights."""
    torch.manual_seed(0)
    inner = 2 * WIDTH * (SIDE // 4) ** 2
    encoder = nn.Sequential(nn.Conv2d(1, WIDTH, 4, 2, 1), nn.ReLU(), nn.Conv2d(WIDTH, 2 * WIDTH, 4, 2, 1), nn.ReLU(),
                            nn.Flatten(), nn.Linear(inner, 2 * LATENT))
    decoder = nn.Sequential(nn.Linear(LATENT, inner), nn.ReLU(), nn.Unflatten(1, (2 * WIDTH, SIDE // 4, SIDE // 4)),
                            nn.ConvTranspose2d(2 * WIDTH, WIDTH, 4, 2, 1), nn.ReLU(),
                            nn.ConvTranspose2d(WIDTH, 1, 4, 2, 1))
    return encoder.eval(), decoder.eval()


def weights(encoder: nn.Sequential, decoder: nn.Sequential) -> dict[str, np.ndarray]:
    """The parameters under ConvVAE's names (encoder.*, heads.*, decoder.*)."""
    out = {}
    for name, value in encoder.state_dict().items():
        index, kind = name.split(".")
        key = f"heads.{kind}" if index == "5" else f"encoder.{name}"
        out[f"weights/{key}"] = value.numpy()
    out.update({f"weights/decoder.{name}": value.numpy() for name, value in decoder.state_dict().items()})
    return out


def boxes() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Input boxes: sparse images (most pixels 0, some 1) at each eps; latent boxes at each half-width."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 1, SIDE, SIDE, generator=gen)
    images = torch.where(images > 0.8, 1.0, torch.where(images > 0.6, images, 0.0))
    codes = torch.randn(2, LATENT, generator=gen)
    out = {f"encoder/{eps}": ((images - eps).clamp(0, 1), (images + eps).clamp(0, 1)) for eps in EPS}
    out.update({f"decoder/{w}": (codes - w, codes + w) for w in HALF_WIDTHS})
    return out


def lirpa_bounds(net: nn.Sequential, lower: torch.Tensor, upper: torch.Tensor, method: str,
                 affine: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """auto_LiRPA's bounds on the output of each affine layer in ``affine`` (in order). Method "CROWN-IBP-min"
    is CROWN with ``compare_crown_with_ibp``: each intermediate bound also capped by IBP from the layer below."""
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    options = {"compare_crown_with_ibp": method == "CROWN-IBP-min"}
    flat = nn.Sequential(*net, nn.Flatten())  # its final comparison with IBP takes flat outputs only
    model = BoundedModule(flat, torch.zeros(1, *lower.shape[1:]), bound_opts=options, verbose=0)
    x = BoundedTensor((lower + upper) / 2, PerturbationLpNorm(norm=float("inf"), x_L=lower, x_U=upper))
    final = model.compute_bounds(x=(x,), method=method.split("-")[0])
    names = [node.name for node in model.nodes() if type(node).__name__ in ("BoundConv", "BoundLinear",
                                                                              "BoundConvTranspose")]
    assert len(names) == len(affine), names
    saved = model.save_intermediate()
    out = [tuple(t.detach().numpy() for t in saved[name]) for name in names[:-1]]
    shape = saved[names[-1]][0].shape
    return out + [tuple(t.detach().reshape(shape).numpy() for t in final)]


def main() -> None:
    import auto_LiRPA

    warnings.filterwarnings("ignore")
    encoder, decoder = networks()
    record = {**weights(encoder, decoder), "auto_lirpa_version": np.array(auto_LiRPA.__version__),
              "auto_lirpa_commit": np.array(COMMIT), "torch_version": np.array(torch.__version__)}
    for key, (lower, upper) in boxes().items():
        net, affine = (encoder, ENCODER_AFFINE) if key.startswith("encoder") else (decoder, DECODER_AFFINE)
        record[f"{key}/lower"], record[f"{key}/upper"] = lower.numpy(), upper.numpy()
        for method in METHODS:
            for layer, (low, up) in zip(affine, lirpa_bounds(net, lower, upper, method, affine)):
                record[f"{key}/{method}/{layer}/lower"], record[f"{key}/{method}/{layer}/upper"] = low, up
    FIXTURE.parent.mkdir(exist_ok=True)
    np.savez_compressed(FIXTURE, **record)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
