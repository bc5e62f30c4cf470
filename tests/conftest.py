"""Shared fixtures: an isolated cache and results folder, and a small model trained on digits."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from bench.attacks import ThreatCard
from bench.data import load_dataset
from bench.models.archs import small_cnn


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
    """A small CNN trained (not robustly) on 8x8 digits in about a second: ~90% clean accuracy."""
    torch.manual_seed(0)
    train = load_dataset("digits", "train")
    model = small_cnn(input_size=8)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(30):
        for i in range(0, len(train), 64):
            loss = F.cross_entropy(model(train.x[i:i + 64]), train.y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


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


def threat(family: str, card_id: str | None = None, **params) -> ThreatCard:
    return ThreatCard(id=card_id or f"test-{family}", family=family, params=params)


def write_threat(folder: Path, family: str, **params) -> Path:
    import yaml

    path = folder / f"test-{family}.yaml"
    path.write_text(yaml.safe_dump({"id": f"test-{family}", "family": family, "params": params}))
    return path
