"""A package, so that its conftest does not shadow the top-level `conftest` module other tests import helpers from."""
