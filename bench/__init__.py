"""bench: a robustness evaluation suite for image classifiers and generative models.

The Python API mirrors the CLI::

    import bench
    model = bench.load_model("mnist-cnn-pgd-at")
    summary = bench.evaluate(model, "autoattack-linf-0.3", dataset="mnist", n=200)
    summary = bench.evaluate(model, "pgd", x=images, y=labels, dataset="mnist")   # tensors you hold
    summary = bench.evaluate(model, "pgd", x=images, y=labels, eps="8/255", norm="Linf")   # at your own ball
    adv = bench.attack(model, "pgd", images, labels, dataset="mnist").x_adv       # adversarial inputs
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_model", "load_data", "evaluate", "attack", "saved_inputs", "check_convergence", "train",
           "list_models", "list_threats", "board", "BenchError"]

from bench.errors import BenchError


def load_model(card, *, device="cpu", trust_code=()):
    """Build a model card's model (eval mode, normalisation inside), training it first if needed; a card
    built by Python code (an entry point) runs only if its package is in ``trust_code``."""
    from bench.training import build_trained

    return build_trained(card, device=device, trust_code=tuple(trust_code))


def load_data(name: str, *, split: str = "test", n: int | None = None, root=None):
    """(x, y) tensors: images in [0, 1], NCHW; with ``n``, the fixed evaluation subset of n points."""
    from bench.data import load_dataset, subset_indices

    ds = load_dataset(name, split, root)
    if n is None:
        return ds.x, ds.y
    idx = subset_indices(len(ds), n)
    return ds.x[idx], ds.y[idx]


def evaluate(model, threat, **kwargs):
    """Evaluate a model card id / ModelCard / bare nn.Module against a threat; see bench.run.evaluate."""
    from bench.run import evaluate as run_evaluate

    return run_evaluate(model, threat, **kwargs)


def attack(model, threat, x, y, **kwargs):
    """Each point's adversarial input and outcome (``.x_adv``, ``.robust``, ``.rows``), computed as a run computes
    its rows, nothing stored; see bench.adversarial.attack."""
    from bench.adversarial import attack as attack_points

    return attack_points(model, threat, x, y, **kwargs)


def saved_inputs(run_id, results=None):
    """(indices, adversarial inputs) that `bench run --save-adv` stored for a run."""
    from bench.adversarial import saved_inputs as read

    return read(run_id, results)


def check_convergence(summary, model, threat, **kwargs):
    """Would twice the budget change the answer? Attack the run's survivors again with every budget param doubled
    (``summary`` from ``evaluate(model, threat, ...)``, the same keyword arguments); see bench.convergence."""
    from bench.convergence import check_convergence as check

    return check(summary, model=model, threat=threat, **kwargs)


def train(card, **kwargs):
    """Train a model card's recipe into the cache and return the weight file's path."""
    from bench.training import train as train_card

    return train_card(card, **kwargs)


def list_models() -> list[str]:
    from bench.cards import catalogue

    return list(catalogue("model").cards)


def list_threats() -> list[str]:
    from bench.cards import catalogue

    return list(catalogue("threat").cards)


def board(*, dataset: str | None = None, threat: str | None = None, results=None):
    """The leaderboard as a pandas DataFrame (`bench board` in the CLI)."""
    from bench.leaderboard import leaderboard
    from bench.store import Store

    return leaderboard(Store(results), dataset, threat)
