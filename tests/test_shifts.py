"""Natural distribution shifts (``shifts.py``): properties of every shift at every default strength on real MNIST
digits and on colour images, closeness to independent implementations (torchvision, scipy), and the
MNIST-like ``digits28`` dataset."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.data import load_dataset
from bench.ops.shifts import SHIFTS

NAMES = SHIFTS.names()


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """64 MNIST test digits, (64, 1, 28, 28) in [0, 1]."""
    return load_dataset("mnist", "test").x[:64]


@pytest.fixture(scope="module")
def colour() -> torch.Tensor:
    """Eight 3-channel images, non-square so that height and width cannot be confused."""
    return torch.rand(8, 3, 24, 32, generator=torch.Generator().manual_seed(1))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_the_registry_holds_the_named_shifts_with_graded_levels():
    assert set(NAMES) == {"darker", "brighter", "contrast", "gamma", "sharper", "blur", "rotation", "translation",
                          "noise"}
    for name, shift in SHIFTS.items():
        assert shift.name == name and len(shift.strengths) == 5 and shift.identity not in shift.strengths
        steps = np.diff(np.array(shift.strengths) - shift.identity)
        away = np.abs(np.array(shift.strengths) - shift.identity)
        assert np.all(np.diff(away) > 0) and len(set(np.sign(steps))) == 1, name  # mild to strong, one direction


def test_the_levels_cover_the_ood_to_id_notes_dark_and_sharp_ranges():
    assert {0.2, 0.4, 0.6} <= set(SHIFTS.get("darker").strengths)
    assert min(SHIFTS.get("sharper").strengths) == 1 and max(SHIFTS.get("sharper").strengths) == 3
    assert all(k > 1 for k in SHIFTS.get("gamma").strengths)


@pytest.mark.parametrize("name", NAMES)
def test_every_level_keeps_shape_dtype_and_range_on_one_and_three_channels(digits, colour, name):
    shift = SHIFTS.get(name)
    for x in (digits, colour, colour.double()):
        for strength in shift.strengths:
            out = shift(x, strength, _gen())
            assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
            assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
            assert not torch.equal(out, x), (name, strength)


@pytest.mark.parametrize("name", NAMES)
def test_the_identity_strength_returns_the_input(digits, colour, name):
    shift = SHIFTS.get(name)
    for x in (digits, colour):
        assert torch.allclose(shift(x, shift.identity, _gen()), x, atol=1e-5, rtol=0), name


# Translation is graded by the size of the move; its mean pixel distance from the clean digits stops growing once
# a shifted stroke no longer overlaps the original (on these 64 digits: 0.159, 0.182, 0.187 at 2, 3, 4 px, then
# 0.179 and 0.170 at 6 and 8 px), so only its levels up to 4 px are checked here; its moves are checked below.
MONOTONE_UP_TO = {"translation": 4.0}


@pytest.mark.parametrize("name", NAMES)
def test_the_distance_from_the_clean_digits_grows_with_the_strength(digits, name):
    shift = SHIFTS.get(name)
    levels = [s for s in shift.strengths if abs(s - shift.identity) <= abs(MONOTONE_UP_TO.get(name, np.inf))]
    distances = [float((shift(digits, s, _gen()) - digits).abs().mean()) for s in (shift.identity, *levels)]
    assert distances[0] < 1e-6 and all(b > a for a, b in zip(distances, distances[1:])), distances


def test_translation_moves_the_centre_of_mass_by_the_strength(digits):
    x = torch.nn.functional.pad(digits, (0, 8, 0, 8))  # room below and to the right: no ink is cut off
    index = torch.arange(36.0)

    def centre(x):
        mass = x.sum((1, 2, 3))
        return torch.stack([(x.sum((1, 3)) * index).sum(1) / mass, (x.sum((1, 2)) * index).sum(1) / mass], 1)

    for s in SHIFTS.get("translation").strengths:
        moved = SHIFTS.get("translation")(x, s)
        assert torch.allclose(moved.sum((1, 2, 3)), x.sum((1, 2, 3)))
        assert torch.allclose(centre(moved) - centre(x), torch.full((len(x), 2), s), atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_a_batch_equals_the_images_one_at_a_time(digits, colour, name):
    shift = SHIFTS.get(name)
    strength = shift.strengths[-1]
    for x in (digits[:8], colour):
        batch = shift(x, strength, _gen(5))
        gen = _gen(5)
        singles = torch.cat([shift(x[i:i + 1], strength, gen) for i in range(len(x))])
        assert torch.allclose(batch, singles, atol=1e-6, rtol=0), name


@pytest.mark.parametrize("name", NAMES)
def test_a_seed_gives_the_same_images(digits, name):
    shift = SHIFTS.get(name)
    first, again = (shift(digits, shift.strengths[2], _gen(7)) for _ in range(2))
    assert torch.equal(first, again)
    other = shift(digits, shift.strengths[2], _gen(8))
    assert torch.equal(first, other) == (name != "noise")


def test_the_noise_needs_a_generator_and_translation_whole_pixels(digits):
    with pytest.raises(ValueError, match="Generator"):
        SHIFTS.get("noise")(digits, 0.1)
    with pytest.raises(ValueError, match="whole pixels"):
        SHIFTS.get("translation")(digits, 1.5)
    with pytest.raises(ValueError, match="NCHW|N, C, H, W"):
        SHIFTS.get("darker")(digits[0], 0.5)


def test_the_noise_has_the_strength_as_its_standard_deviation():
    grey = torch.full((16, 3, 32, 32), 0.5)
    for sigma in (0.05, 0.1):
        delta = SHIFTS.get("noise")(grey, sigma, _gen()) - grey  # 0.5 is 5 sigma from the clamp: no clipping
        assert abs(float(delta.std()) / sigma - 1) < 0.03 and abs(float(delta.mean())) < 0.01 * sigma * 10


# --- closeness to independent implementations ------------------------------------------------------------

TF = pytest.importorskip("torchvision.transforms.functional")


@pytest.mark.parametrize("name, reference", [
    ("darker", lambda x, s: TF.adjust_brightness(x, s)),
    ("brighter", lambda x, s: 1 - TF.adjust_brightness(1 - x, s)),
    ("contrast", lambda x, s: TF.adjust_contrast(x, s)),
    ("gamma", lambda x, s: TF.adjust_gamma(x, s)),
])
def test_photometric_shifts_match_torchvision(digits, colour, name, reference):
    shift = SHIFTS.get(name)
    for x in (digits, colour):
        for s in shift.strengths:
            assert torch.allclose(shift(x, s), reference(x, s), atol=1e-6, rtol=0), (name, s)


def test_rotation_matches_torchvision_rotate(digits, colour):
    from torchvision.transforms import InterpolationMode

    shift = SHIFTS.get("rotation")
    for x in (digits, colour):
        for s in shift.strengths:
            reference = TF.rotate(x, s, interpolation=InterpolationMode.BILINEAR)  # counter-clockwise, zero fill
            assert torch.allclose(shift(x, s), reference, atol=1e-5, rtol=0), s


def test_translation_matches_torchvision_affine(digits, colour):
    from torchvision.transforms import InterpolationMode

    shift = SHIFTS.get("translation")
    for x in (digits, colour):
        for s in shift.strengths:
            reference = TF.affine(x, angle=0.0, translate=[int(s), int(s)], scale=1.0, shear=[0.0, 0.0],
                                  interpolation=InterpolationMode.NEAREST)
            assert torch.equal(shift(x, s), reference), s


def test_blur_and_sharpening_match_scipy(digits, colour):
    from scipy.ndimage import gaussian_filter

    for x in (digits, colour):
        array = x.double().numpy()
        for s in SHIFTS.get("blur").strengths:
            reference = gaussian_filter(array, sigma=(0, 0, s, s), mode="nearest", truncate=4.0)
            assert np.allclose(SHIFTS.get("blur")(x, s).numpy(), reference, atol=1e-6, rtol=0), s
        blurred = gaussian_filter(array, sigma=(0, 0, 1, 1), mode="nearest", truncate=4.0)
        for a in SHIFTS.get("sharper").strengths:
            reference = np.clip(array + a * (array - blurred), 0, 1)
            assert np.allclose(SHIFTS.get("sharper")(x, a).numpy(), reference, atol=1e-5, rtol=0), a


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_a_gpu_gives_the_cpu_images(digits, name):
    shift = SHIFTS.get(name)
    for s in shift.strengths:
        on_gpu = shift(digits.cuda(), s, _gen(3))
        assert on_gpu.device.type == "cuda"
        assert torch.allclose(on_gpu.cpu(), shift(digits, s, _gen(3)), atol=1e-5, rtol=0), (name, s)


# --- digits28: scikit-learn's digits made MNIST-like ----------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test"])
def test_digits28_is_the_digits_split_as_28x28_mnist_like_images(split):
    small, big = load_dataset("digits", split), load_dataset("digits28", split)
    assert big.name == "digits28" and big.x.shape == (len(small), 1, 28, 28) and big.x.dtype == torch.float32
    assert big.x.min() == 0 and big.x.max() <= 1 and big.x.max() > 0.99
    assert torch.equal(big.y, small.y) and big.classes == small.classes
    index = torch.arange(28.0)
    mass = big.x.sum((1, 2, 3))
    rows = (big.x.sum((1, 3)) * index).sum(1) / mass
    cols = (big.x.sum((1, 2)) * index).sum(1) / mass
    mean = big.x.mean(0)[0]
    centre = ((mean.sum(1) * index).sum() / mean.sum(), (mean.sum(0) * index).sum() / mean.sum())
    assert abs(centre[0] - 13.5) < 1 and abs(centre[1] - 13.5) < 1
    assert (rows - 13.5).abs().max() <= 0.5 + 1e-4 and (cols - 13.5).abs().max() <= 0.5 + 1e-4  # each, to a pixel
    ink = big.x[:, 0] > 0
    assert ink.any(2).sum(1).max() <= 20 and ink.any(1).sum(1).max() <= 20  # the digit fits the 20x20 box
    assert ((big.x == 0).flatten(1).sum(1) >= 28 * 28 - 20 * 20).all()  # a black canvas: the ink is high, as MNIST's


@pytest.mark.parametrize("mode", ["nearest", "mirror", "reflect"])
def test_the_gaussian_filter_is_scipys_in_every_boundary_mode_even_wider_than_the_image(mode):
    """The filter's matrices fold the taps that fall outside as scipy does, for a kernel wider than the image too
    (a padded convolution could not reflect that far)."""
    from scipy.ndimage import gaussian_filter

    from bench.ops.filters import gaussian_blur

    x = torch.rand(2, 3, 7, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for sigma in (0.7, 2.0, 5.0):
        reference = gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode=mode, truncate=4.0)
        np.testing.assert_allclose(gaussian_blur(x, sigma, mode).numpy(), reference, atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode", ["nearest", "mirror"])
def test_the_2d_filter_is_scipys_correlate_on_small_and_large_images(mode):
    """Small images take the SVD's separable matrix products (a disk wider than the image included), large ones
    the padded convolution: both are scipy's ``correlate`` for a full-rank kernel and for a low-rank disk."""
    from scipy.ndimage import correlate

    from bench.families.corruptions.library import _disk
    from bench.ops.filters import correlate2d

    gen = torch.Generator().manual_seed(0)
    kernels = [torch.rand(5, 5, dtype=torch.float64, generator=gen), _disk(3, 0.5).double()]
    for x in (torch.rand(2, 3, 7, 12, dtype=torch.float64, generator=gen),
              torch.rand(1, 2, 64, 64, dtype=torch.float64, generator=gen)):
        for kernel in kernels:
            reference = correlate(x.numpy(), kernel.numpy()[None, None], mode=mode)
            np.testing.assert_allclose(correlate2d(x, kernel, mode).numpy(), reference, atol=1e-12, rtol=0)
