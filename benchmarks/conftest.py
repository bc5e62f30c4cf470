import pytest

from bench.testing import tiny_digits_model


@pytest.fixture(scope="session")
def digits_model():
    return tiny_digits_model()
