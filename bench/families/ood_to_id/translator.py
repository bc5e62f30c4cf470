"""The ``translator`` task (an image-to-image model: images in [0, 1] to images of the same shape) and the
small residual U-Net that OOD-to-ID defences use for it.

The U-Net predicts a correction added to its input (then clipped to [0, 1]), so the identity, which the
translator must be on in-distribution images, is where training starts from rather than something it
has to learn.
"""
from __future__ import annotations


import torch
from torch import Tensor, nn

from bench.errors import BenchError
from bench.metrics import Metric
from bench.models.archs import architecture
from bench.tasks import TASKS, Task

TASK = "translator"


def translate(model: nn.Module, x: Tensor) -> Tensor:
    """The model's translation of x, checked: same shape, finite, in [0, 1]."""
    out = model(x)
    if not isinstance(out, Tensor) or out.shape != x.shape or not torch.isfinite(out).all():
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise BenchError(f"the translator returned {got} for images of shape {tuple(x.shape)}, or non-finite values",
                         "a translator maps a batch of images to finite images of the same shape")
    return out.clamp(0, 1)


class Translator(Task):
    name = TASK
    description = "image to image of the same shape (e.g. an OOD-to-ID mapping); used inside a composed defence"
    uses_labels = False
    clean_metrics = (Metric("identity_l1", "identity_l1", "mean |T(x) - x| on clean images", higher_is_better=False),)

    @torch.no_grad()
    def clean_pass(self, model: nn.Module, x: Tensor, y: Tensor, num_classes: int | None) -> dict[str, Tensor]:
        return {"identity_l1": (translate(model, x) - x).abs().flatten(1).mean(1)}

    @torch.no_grad()
    def probe(self, model: nn.Module, x: Tensor) -> Tensor:
        return translate(model, x)

    def trained_summary(self, card, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Mean |T(s(x)) - x| on 1,000 test images for identity and for each shift the recipe trains on."""
        from bench.data import load_dataset, subset_indices
        test = load_dataset(card.dataset, "test")
        x = test.x[subset_indices(len(test), min(1000, len(test)))].to(device)
        recipe = card.make_recipe()
        out = {}
        with torch.no_grad():
            for name, shifted in recipe.examples(x, torch.Generator().manual_seed(0)).items():
                out[f"l1_{name}"] = float((translate(model, shifted) - x).abs().mean())
                out[f"l1_{name}_untranslated"] = float((shifted - x).abs().mean())
        return out


TASKS.register(TASK, Translator())


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1),
                         nn.ReLU())


class ResidualUNet(nn.Module):
    """Two poolings down (28 -> 14 -> 7), two up-samplings back, skip connections; output x + correction."""

    def __init__(self, channels: int = 1, width: int = 16):
        super().__init__()
        self.down1, self.down2 = _block(channels, width), _block(width, 2 * width)
        self.bottom = _block(2 * width, 4 * width)
        self.up2, self.merge2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2), _block(4 * width, 2 * width)
        self.up1, self.merge1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2), _block(2 * width, width)
        self.out = nn.Conv2d(width, channels, 1)
        nn.init.zeros_(self.out.weight)  # start as the identity
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise BenchError(f"the U-Net translator needs image sides divisible by 4, got {tuple(x.shape[-2:])}",
                             "pad the images or use another translator architecture")
        d1 = self.down1(x)
        d2 = self.down2(nn.functional.max_pool2d(d1, 2))
        b = self.bottom(nn.functional.max_pool2d(d2, 2))
        u2 = self.merge2(torch.cat([self.up2(b), d2], 1))
        u1 = self.merge1(torch.cat([self.up1(u2), d1], 1))
        return (x + self.out(u1)).clamp(0, 1)


@architecture("residual-unet", task="translator")
def residual_unet(channels: int = 1, width: int = 16) -> nn.Module:
    return ResidualUNet(channels, width)
