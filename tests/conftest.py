"""Shared fixtures: an isolated cache and results folder, and a small model trained on digits."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bench.testing import threat_card as threat  # noqa: F401  (tests import it from here)
from bench.testing import tiny_digits_model


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-cache")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path, session_cache):
    """Nothing a test does touches the user's cache or ./bench-results."""
    monkeypatch.setenv("BENCH_CACHE", str(session_cache))
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.delenv("BENCH_CARDS", raising=False)


@pytest.fixture(scope="session")
def digits_model() -> torch.nn.Module:
    return tiny_digits_model()


@pytest.fixture(scope="session")
def digits_card(digits_model, tmp_path_factory) -> Path:
    """A model card file whose weights are the digits model."""
    from bench.models.weights import sha256_file

    folder = tmp_path_factory.mktemp("cards")
    weights = folder / "digits-cnn.safetensors"
    save_file({k: v.contiguous() for k, v in digits_model.state_dict().items()}, str(weights))
    card = folder / "digits-cnn.yaml"
    card.write_text(
        "id: digits-cnn\ndataset: digits\narchitecture: {name: small-cnn, kwargs: {input_size: 8}}\n"
        f"weights: {{file: digits-cnn.safetensors, sha256: {sha256_file(weights)}}}\n")
    return card


def write_threat(folder: Path, family: str, **params) -> Path:
    import yaml

    path = folder / f"test-{family}.yaml"
    path.write_text(yaml.safe_dump({"id": f"test-{family}", "family": family, "params": params}))
    return path
