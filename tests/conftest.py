"""Shared fixtures: an isolated cache and results folder, and a small model trained on digits."""
from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class BuiltSite:
    entries: Path  # the leaderboard folder (entries/<dataset>/*.json)
    site: Path


@pytest.fixture(scope="session")
def all_families_site(tmp_path_factory, session_cache) -> BuiltSite:
    """Entries of every threat family, rendered as the leaderboard site: each family's fingerprint card run on
    its tiny model (tests/fingerprints: n 24, one thread), as the fingerprint test runs it."""
    from fingerprints.fingerprint import BATCH, FOLDER, N, model_card

    import bench
    from bench.leaderboard.entries import write_entries
    from bench.leaderboard.site import build_site
    from bench.store import Store
    from bench.threats import THREAT_FAMILIES, load_threat_card

    root = tmp_path_factory.mktemp("all-families")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("BENCH_CACHE", str(session_cache))
        env.delenv("BENCH_CARDS", raising=False)
        for family in THREAT_FAMILIES.names():
            bench.evaluate(str(model_card(family)), load_threat_card(FOLDER / "cards" / f"{family}.yaml"),
                           dataset="digits", n=N, batch_size=BATCH, seed=0, threads=1, results=root / "results",
                           progress=False)
        warnings: list[str] = []
        write_entries(Store(root / "results"), root / "leaderboard", warnings)
        assert not warnings
        build_site(root / "leaderboard", root / "site", FOLDER / "cards")
    return BuiltSite(root / "leaderboard", root / "site")
