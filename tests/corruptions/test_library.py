"""The corruption library: properties of every corruption at every severity and scale, and closeness to an
independent implementation (imagecorruptions, numpy, ImageNet-C constants) on natural images, with the
reference's random draws replaced by ours where it takes them from numpy."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bench.families.corruptions.library import CORRUPTIONS, SCALES, motion_blur, plasma_fractal, uniform_noise

NAMES = CORRUPTIONS.names()


@pytest.fixture(scope="module")
def natural() -> torch.Tensor:
    """Twelve 32x32 patches of scikit-learn's two sample photographs (uint8 values), NCHW in [0, 1]."""
    from sklearn.datasets import load_sample_images

    patches = [image[r:r + 96:3, c:c + 96:3] for image in load_sample_images().images
               for r, c in ((40, 60), (150, 300), (250, 450), (300, 100), (60, 500), (200, 200))]
    return torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).float() / 255


def test_the_library_has_the_19_corruptions_of_cifar10_c():
    assert len(NAMES) == 19 and {"gaussian_noise", "glass_blur", "snow", "spatter", "saturate"} <= set(NAMES)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", NAMES)
def test_every_corruption_keeps_shape_dtype_and_range_and_is_seeded(natural, name, scale):
    corruption = CORRUPTIONS.get(name)
    for severity in range(1, 6):
        out = corruption(natural, severity, torch.Generator().manual_seed(3), scale)
        assert out.shape == natural.shape and out.dtype == natural.dtype
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
        again = corruption(natural, severity, torch.Generator().manual_seed(3), scale)
        assert torch.equal(out, again)


@pytest.mark.parametrize("name", NAMES)
def test_a_batch_equals_the_images_one_at_a_time_with_the_same_draws(natural, name):
    corruption = CORRUPTIONS.get(name)
    c = corruption.constant(5)
    draws = corruption.draw(natural, c, torch.Generator().manual_seed(0))
    batch = corruption.apply(natural, c, draws).clamp(0, 1)
    for i in range(len(natural)):
        single = corruption.apply(natural[i:i + 1], c, {k: v[i:i + 1] for k, v in draws.items()}).clamp(0, 1)
        assert torch.allclose(batch[i:i + 1], single, atol=1e-6), (name, i)


def test_grey_images_are_corrupted_too():
    grey = torch.rand(4, 1, 28, 28)
    for name in NAMES:
        out = CORRUPTIONS.get(name)(grey, 3, torch.Generator().manual_seed(0))
        assert out.shape == grey.shape and out.min() >= 0 and out.max() <= 1, name


# Not monotone in pixel distance by the reference generators' own constants (mean |corrupted - clean| on these
# patches, 5 seeds): saturate desaturates, then oversaturates; CIFAR-10-C's elastic transform trades a shrinking
# affine move (0.08 to 0.03 of the side) for a growing displacement field; frost dims the image from severity 3
# to 4 with the same frost weight (0.194 -> 0.183 at CIFAR-10-C's constants); CIFAR-10-C's glass blur alternates
# blur and shuffle iterations (0.038, 0.039, 0.038, 0.054, 0.051 with the generators' copying shuffle), and so
# does ImageNet-C's on 32 px images (0.047, 0.047, 0.056, 0.054, 0.055); CIFAR-10-C's spatter is water at
# 1-3, mud at 4-5; the ImageNet-C snow of severities 2 and 3 is equally far on 32 px images (0.2307 and 0.2308
# over 20 seeds).
NOT_MONOTONE = {("saturate", "cifar"), ("saturate", "imagenet"), ("elastic_transform", "cifar"), ("frost", "cifar"),
                ("frost", "imagenet"), ("glass_blur", "cifar"), ("glass_blur", "imagenet"), ("spatter", "cifar"),
                ("snow", "imagenet")}


@pytest.mark.parametrize("name, scale", [(n, s) for n in NAMES for s in SCALES if (n, s) not in NOT_MONOTONE])
def test_severity_is_monotone_in_the_distance_from_the_clean_image(natural, name, scale):
    corruption = CORRUPTIONS.get(name)
    def distance(severity: int, seed: int) -> float:
        return float((corruption(natural, severity, torch.Generator().manual_seed(seed), scale) - natural).abs().mean())

    distances = [np.mean([distance(s, k) for k in range(3)]) for s in range(1, 6)]
    assert all(b >= a - 1e-3 for a, b in zip(distances, distances[1:])), distances
    assert distances[-1] > distances[0]


def test_saturation_moves_away_from_the_clean_image_in_both_directions(natural):
    corruption = CORRUPTIONS.get("saturate")
    distances = [float((corruption(natural, s, torch.Generator()) - natural).abs().mean()) for s in range(1, 6)]
    assert distances[1] > distances[0] and distances[4] > distances[3] > distances[2] > 0


def test_the_plasma_fractal_spans_zero_to_one_and_depends_on_the_seed():
    maps = plasma_fractal(3, 32, 2.0, uniform_noise(torch.Generator().manual_seed(0)))
    assert maps.shape == (3, 32, 32) and (maps.flatten(1).amin(1) == 0).all() and (maps.flatten(1).amax(1) == 1).all()
    assert not torch.equal(maps[0], maps[1])


# --- closeness to imagecorruptions (ImageNet-C constants) ---------------------------------------------

ic = pytest.importorskip("imagecorruptions")


def _hwc(x: torch.Tensor) -> np.ndarray:
    return np.round(x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def _reference(name: str, image: np.ndarray, severity: int) -> np.ndarray:
    pil = name in ("jpeg_compression", "pixelate", "spatter")
    out = getattr(ic, name)(Image.fromarray(image) if pil else image, severity)
    return np.clip(np.asarray(out, dtype=np.float64), 0, 255) / 255


def _ours(name: str, image: np.ndarray, severity: int, draws: dict | None = None) -> np.ndarray:
    x = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None]
    corruption = CORRUPTIONS.get(name)
    c = corruption.constant(severity, "imagenet")
    out = corruption.apply(x, c, draws if draws is not None else {}).clamp(0, 1)
    return out[0].permute(1, 2, 0).double().numpy()


class _Queue:
    """Stands in for numpy's random functions: hands out our draws in the reference's order and layout."""

    def __init__(self, *values):
        self.values = list(values)

    def __call__(self, *args, **kwargs):
        return self.values.pop(0)


def _centred_clipped_zoom(img: np.ndarray, zoom_factor: float) -> np.ndarray:
    """The original generators' clipped zoom: imagecorruptions keeps the top-left h x w of the zoomed crop,
    ImageNet-C and CIFAR-10-C keep its centre (as we do)."""
    from scipy.ndimage import zoom

    h = img.shape[0]
    crop = int(np.ceil(h / zoom_factor))
    top = (h - crop) // 2
    img = zoom(img[top:top + crop, top:top + crop], (zoom_factor, zoom_factor, 1), order=1)
    trim = (img.shape[0] - h) // 2
    return img[trim:trim + h, trim:trim + h]


@pytest.mark.parametrize("name, tolerance", [
    ("contrast", 1e-6), ("brightness", 1e-6), ("saturate", 1e-6), ("gaussian_blur", 1e-6),
    ("defocus_blur", 1e-5), ("zoom_blur", 1e-5), ("jpeg_compression", 1e-6),
    ("pixelate", 1e-6),  # Pillow rounds to 8 bits after each pass along the rows or columns, and so do we
])
@pytest.mark.parametrize("severity", range(1, 6))
def test_deterministic_corruptions_match_imagecorruptions(natural, monkeypatch, name, tolerance, severity):
    import imagecorruptions.corruptions as ref

    monkeypatch.setattr(ref, "clipped_zoom", _centred_clipped_zoom)
    for x in natural[:4]:
        image = _hwc(x)
        assert np.abs(_reference(name, image, severity) - _ours(name, image, severity)).max() <= tolerance


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_noise_corruptions_match_imagecorruptions_with_the_same_noise(natural, monkeypatch, severity):
    image = _hwc(natural[0])
    normal = np.random.default_rng(0).standard_normal(image.shape)
    noise = torch.from_numpy(normal).permute(2, 0, 1)[None].float()
    for name in ("gaussian_noise", "speckle_noise"):
        c = CORRUPTIONS.get(name).constant(severity, "imagenet")
        monkeypatch.setattr(np.random, "normal", _Queue(normal * c))
        assert np.abs(_reference(name, image, severity) - _ours(name, image, severity, {"noise": noise})).max() < 1e-5
    c = CORRUPTIONS.get("shot_noise").constant(severity, "imagenet")
    counts = np.random.default_rng(1).poisson(image / 255 * c)
    monkeypatch.setattr(np.random, "poisson", _Queue(counts))
    ours = _ours("shot_noise", image, severity, {"counts": torch.from_numpy(counts).permute(2, 0, 1)[None].double()})
    assert np.abs(_reference("shot_noise", image, severity) - ours).max() < 1e-6


def test_impulse_noise_matches_scikit_image_salt_and_pepper(natural, monkeypatch):
    import skimage.util.noise as sk_noise

    image = _hwc(natural[1])
    flip, salt = (np.random.default_rng(k).random(image.shape) for k in (2, 3))

    class Rng:
        def __init__(self):
            self.queue = [flip, salt]

        def random(self, shape):
            return self.queue.pop(0)

    monkeypatch.setattr(sk_noise.np.random, "default_rng", lambda *a, **k: Rng())
    draws = {k: torch.from_numpy(v).permute(2, 0, 1)[None].float() for k, v in (("flip", flip), ("salt", salt))}
    assert np.abs(_reference("impulse_noise", image, 4) - _ours("impulse_noise", image, 4, draws)).max() < 1e-6


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_motion_blur_matches_imagecorruptions_at_the_same_angle(natural, monkeypatch, severity):
    """The blur itself: the corruption then reads it back in 8 bits as ImageMagick writes it, which imagecorruptions
    does not (the ImageMagick round trip is held to the original in ``test_reference_generators.py``)."""
    image = _hwc(natural[2])
    monkeypatch.setattr(np.random, "uniform", _Queue(23.0))
    c = CORRUPTIONS.get("motion_blur").constant(severity, "imagenet")
    x = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None]
    ours = motion_blur(x, c[0], c[1], torch.tensor([23.0]))[0].permute(1, 2, 0).double().numpy()
    assert np.abs(_reference("motion_blur", image, severity) - ours).max() < 1e-5
    stored = _ours("motion_blur", image, severity, {"angle": torch.tensor([23.0])})
    assert np.abs(stored - ours).max() <= 1 / 255 + 1e-6


def test_fog_matches_imagecorruptions_with_the_same_plasma(natural, monkeypatch):
    import imagecorruptions.corruptions as ref

    image = _hwc(natural[3])
    c = CORRUPTIONS.get("fog").constant(4, "imagenet")
    plasma = plasma_fractal(1, 32, c[1], uniform_noise(torch.Generator().manual_seed(0)))[0]
    monkeypatch.setattr(ref, "plasma_fractal", lambda mapsize, wibbledecay: plasma.numpy())
    ours = _ours("fog", image, 4, {"plasma": plasma[None].float()})
    assert np.abs(_reference("fog", image, 4) - ours).max() < 1e-5


def test_elastic_transform_matches_imagecorruptions_with_the_same_fields(natural, monkeypatch):
    image = _hwc(natural[4])
    side = image.shape[0]
    fields = [np.random.default_rng(k).uniform(-1, 1, image.shape[:2]) for k in (4, 5)]
    max_d = side * 0.005
    monkeypatch.setattr(np.random, "uniform", _Queue(*(f * max_d for f in fields)))
    draws = {"dx": torch.from_numpy(fields[0])[None, None].float(),
             "dy": torch.from_numpy(fields[1])[None, None].float()}
    assert np.abs(_reference("elastic_transform", image, 3) - _ours("elastic_transform", image, 3, draws)).max() < 2e-3


def test_the_mud_of_spatter_matches_imagecorruptions(natural, monkeypatch):
    image = _hwc(natural[5])
    liquid = np.random.default_rng(6).standard_normal(image.shape[:2])
    c = CORRUPTIONS.get("spatter").constant(5, "imagenet")
    monkeypatch.setattr(np.random, "normal", _Queue(liquid * c[1] + c[0]))
    draws = {"liquid": torch.from_numpy(liquid * c[1] + c[0])[None, None].float()}
    assert np.abs(_reference("spatter", image, 5) - _ours("spatter", image, 5, draws)).max() < 1e-5


def test_frost_matches_imagecorruptions_with_the_same_picture_and_crop(natural, monkeypatch):
    from bench.families.corruptions.library import _frost_layer

    image = _hwc(natural[7])
    layer = _frost_layer(2, 32, 32, "imagenet")
    top, left = 17, 40
    monkeypatch.setattr(np.random, "randint", _Queue(2, top, left))
    draws = {"frost": layer[None, :, top:top + 32, left:left + 32]}
    assert np.abs(_reference("frost", image, 3) - _ours("frost", image, 3, draws)).max() < 2 / 255


@pytest.mark.parametrize("width", [2, 3, 4, 5, 6, 7, 64])
def test_a_pillow_pass_in_float32_rounds_every_mean_of_levels_half_up_exactly(width):
    """Pixelate's passes compute in float32: every mean of ``width`` 8-bit levels (exact halves among them) rounds
    as the integer rule floor((2 * sum + m) / 2m), Pillow's half up."""
    from bench.families.corruptions.library import _box_matrix, _resample

    gen = torch.Generator().manual_seed(width)
    levels = torch.randint(0, 256, (4096, 3 * width), generator=gen)
    levels[:8] = torch.tensor([0, 255])[torch.arange(3 * width) % 2]  # alternating extremes: halves at even widths
    weights = _box_matrix(3 * width, 3)
    assert int((weights != 0).sum(1).max()) == width
    ours = _resample(levels.float(), weights, -1)
    sums = levels.view(-1, 3, width).sum(2)
    assert torch.equal(ours.long(), torch.div(2 * sums + width, 2 * width, rounding_mode="floor"))
