"""The engine's tests share the digits model with its parameters frozen, as the engine hands it to its attacks."""
from __future__ import annotations

import pytest

from bench.threats.aa_engine.model import frozen


@pytest.fixture(scope="module")
def model(digits_model):
    with frozen(digits_model):
        yield digits_model
