"""User-facing errors: one line saying what is wrong, one saying how to fix it."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """The hint "did you mean 'x'? " for the closest known name, or an empty string."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


class BenchError(Exception):
    """An error caused by the user's input or environment, shown without a traceback by the CLI."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  fix: {fix}")


class CardError(BenchError):
    """A model or threat card that cannot be loaded or validated."""


class DataError(BenchError):
    """A dataset that is missing or malformed."""


class WeightsError(BenchError):
    """Weights that are missing, corrupted or unsafe to load."""


class NotApplicable(BenchError):
    """A threat that cannot evaluate a model of this kind (a certificate for another architecture, an attack
    that needs methods the model lacks): said before anything is trained, and skipped, with its reason, by a
    submission."""


class DependencyError(BenchError):
    """An optional dependency that is missing or broken."""


def require(module: str, purpose: str, install: str):
    """Import an optional dependency, or raise a DependencyError that says what needs it and how to get it.

    A broken install fails in many ways (ImportError, or e.g. torchvision's RuntimeError for an
    operator missing from the installed torch); each becomes the same clear error."""
    import importlib

    try:
        return importlib.import_module(module)
    except Exception as err:  # noqa: BLE001  (any failure to import means the dependency is unusable)
        raise DependencyError(f"{purpose} needs the package {module.split('.')[0]}, which "
                              f"{'is not installed' if isinstance(err, ModuleNotFoundError) else 'failed to import'}"
                              f" ({type(err).__name__}: {err})", f"run `{install}`") from err
