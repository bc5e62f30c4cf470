"""Shared by the VAE tests: one weights cache for the session, so a tiny VAE card is trained once."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "vae-cache"))
