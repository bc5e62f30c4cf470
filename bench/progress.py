"""Live progress inside a shard: an attack says which stage it is in (``stage("apgd-t: 412 of 500 standing")``)
and whoever runs the shard shows it (the run's progress bar); outside a run it goes nowhere. A context
variable, so no family needs to know who is listening."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

_LISTENER: ContextVar[Callable[[str], None] | None] = ContextVar("bench_stage_listener", default=None)


def stage(text: str) -> None:
    """Say what the attack is doing now."""
    listener = _LISTENER.get()
    if listener is not None:
        listener(text)


@contextlib.contextmanager
def listening(listener: Callable[[str], None]) -> Iterator[None]:
    """Send every ``stage`` said inside this block to ``listener``."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)
