"""MNIST-C in torch: properties of every corruption at every severity, and the deterministic ones against
scikit-image, which the reference generator (google-research/mnist-c) called for them."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.data import load_dataset
from bench.families.corruptions.mnist_c import MNIST_C, MNIST_C_NAMES, MNIST_C_SEVERITY, SCALE

CONSTANT = {"stripe", "dotted_line", "zigzag", "canny_edges"}  # one constant at every level: no severity


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """Sixteen MNIST-like 28x28 digits (scikit-learn's digits, centred by mass as MNIST), NCHW in [0, 1]."""
    return load_dataset("digits28", "test").x[:16]


def _corrupt(name: str, x: torch.Tensor, severity: int, seed: int = 0) -> torch.Tensor:
    return MNIST_C.get(name)(x, severity, torch.Generator().manual_seed(seed), SCALE)


def test_the_registry_holds_the_15_corruptions_of_mnist_c_with_their_published_severity():
    assert sorted(MNIST_C.names()) == sorted(MNIST_C_NAMES) and len(MNIST_C_NAMES) == 15
    assert set(MNIST_C_SEVERITY) == set(MNIST_C_NAMES) and all(1 <= s <= 5 for s in MNIST_C_SEVERITY.values())


@pytest.mark.parametrize("name", MNIST_C_NAMES)
def test_every_corruption_keeps_shape_dtype_and_range_and_is_seeded(digits, name):
    for severity in range(1, 6):
        out = _corrupt(name, digits, severity, seed=3)
        assert out.shape == digits.shape and out.dtype == digits.dtype
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
        assert torch.equal(out, _corrupt(name, digits, severity, seed=3))
        assert not torch.equal(out, digits), (name, severity)


@pytest.mark.parametrize("name", MNIST_C_NAMES)
def test_a_batch_equals_the_images_one_at_a_time_with_the_same_draws(digits, name):
    corruption = MNIST_C.get(name)
    c = corruption.constant(MNIST_C_SEVERITY[name], SCALE)
    draws = corruption.draw(digits, c, torch.Generator().manual_seed(0))
    batch = corruption.apply(digits, c, draws).clamp(0, 1)
    for i in range(len(digits)):
        single = corruption.apply(digits[i:i + 1], c, {k: v[i:i + 1] for k, v in draws.items()}).clamp(0, 1)
        assert torch.allclose(batch[i:i + 1], single, atol=1e-6), (name, i)


# Not monotone by the reference's own constants (mean |corrupted - clean| on 64 digits, 10 seeds): fog's
# severities 3 and 4 are equally far (0.3097, 0.3087: a stronger fog with a faster wibble decay, normalised by
# the brighter maximum); spatter is water at 1-3 (0.021, 0.042, 0.062) and mud at 4-5 (0.031, 0.048).
NOT_MONOTONE = {"fog", "spatter"}


@pytest.mark.parametrize("name", [n for n in MNIST_C_NAMES if n not in CONSTANT | NOT_MONOTONE])
def test_severity_is_monotone_in_the_distance_from_the_clean_image(digits, name):
    def distance(severity: int) -> float:
        return np.mean([float((_corrupt(name, digits, severity, k) - digits).abs().mean()) for k in range(3)])

    distances = [distance(s) for s in range(1, 6)]
    assert all(b >= a - 1e-3 for a, b in zip(distances, distances[1:])), distances
    assert distances[-1] > distances[0]


@pytest.mark.parametrize("name", sorted(CONSTANT))
def test_the_corruptions_without_a_severity_give_one_image_at_every_level(digits, name):
    assert all(torch.equal(_corrupt(name, digits, 1), _corrupt(name, digits, s)) for s in range(2, 6))


def test_canny_edges_match_scikit_image(digits):
    feature = pytest.importorskip("skimage.feature")
    ours = _corrupt("canny_edges", digits, 1)
    for i, image in enumerate(digits[:, 0].double().numpy()):
        theirs = feature.canny(image, sigma=1.0, low_threshold=0.1, high_threshold=0.2)
        assert np.array_equal(ours[i, 0].numpy() == 1, theirs), i
    assert ours.sum() > 0


def _skimage_warp(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    transform = pytest.importorskip("skimage.transform")
    return transform.warp(image, transform.AffineTransform(matrix=matrix), order=1, mode="constant")


def _centred(matrix: np.ndarray) -> np.ndarray:
    """The reference's centring: the translation that keeps (13.5, 13.5) in place."""
    centre = np.array([13.5, 13.5])
    matrix = matrix.copy()
    matrix[:2, 2] = centre - matrix[:2, :2] @ centre
    return matrix


def _matrix_2019(scale=(1.0, 1.0), rotation=0.0, shear=0.0) -> np.ndarray:
    """scikit-image 0.15's AffineTransform(scale, rotation, shear), written out from its documentation."""
    sx, sy = scale
    return np.array([[sx * math.cos(rotation), -sy * math.sin(rotation + shear), 0],
                     [sx * math.sin(rotation), sy * math.cos(rotation + shear), 0], [0, 0, 1]])


@pytest.mark.parametrize("name, build", [
    ("shear", lambda c: _matrix_2019(shear=c)),
    ("rotate", lambda c: _matrix_2019(rotation=c)),
    ("scale", lambda c: _matrix_2019(scale=c)),
])
@pytest.mark.parametrize("severity", [1, 5])
def test_the_affine_maps_match_scikit_image_warp(digits, name, build, severity):
    corruption = MNIST_C.get(name)
    c = corruption.constant(severity, SCALE)
    draws = corruption.draw(digits, c, torch.Generator().manual_seed(severity))
    ours = corruption.apply(digits, c, draws)
    signs = draws["sign"].tolist() if "sign" in draws else [1] * len(digits)
    for i, image in enumerate(digits[:, 0].double().numpy()):
        constant = c if name == "scale" else signs[i] * c
        theirs = _skimage_warp(image, _centred(build(constant)))
        np.testing.assert_allclose(ours[i, 0].double().numpy(), theirs, atol=1e-6, err_msg=f"{name} image {i}")


def test_translation_matches_scikit_image_and_moves_the_digit_by_whole_pixels(digits):
    corruption = MNIST_C.get("translate")
    draws = corruption.draw(digits, 3, torch.Generator().manual_seed(0))
    ours = corruption.apply(digits, 3, draws)
    for i, image in enumerate(digits[:, 0].double().numpy()):
        sx, sy = draws["signs"][i].tolist()
        theirs = _skimage_warp(image, np.array([[1, 0, 3 * sx], [0, 1, 3 * sy], [0, 0, 1.0]]))
        np.testing.assert_allclose(ours[i, 0].double().numpy(), theirs, atol=1e-6)
        inside = image[max(0, 3 * sy):28 + min(0, 3 * sy), max(0, 3 * sx):28 + min(0, 3 * sx)]
        moved = ours[i, 0].double().numpy()[max(0, -3 * sy):28 + min(0, -3 * sy), max(0, -3 * sx):28 + min(0, -3 * sx)]
        np.testing.assert_allclose(moved, inside, atol=1e-6)


def test_brightness_and_stripe_are_the_reference_formulas(digits):
    np.testing.assert_allclose(_corrupt("brightness", digits, 5), (digits + 0.5).clamp(0, 1))
    stripe = _corrupt("stripe", digits, 1)
    assert torch.equal(stripe[..., 7:21], digits[..., 7:21])
    assert torch.allclose(stripe[..., :7], 1 - digits[..., :7])
    assert torch.allclose(stripe[..., 21:], 1 - digits[..., 21:])


def test_wrong_shapes_are_refused_with_the_expected_shape(digits):
    with pytest.raises(ValueError, match="28x28"):
        _corrupt("shear", torch.rand(2, 1, 32, 32), 1)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        _corrupt("fog", digits.repeat(1, 3, 1, 1), 1)
