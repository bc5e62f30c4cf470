"""A run as a portable description: ``RunSpec``, and ``build(spec)``, the one way to get what a run's shards
execute against, on the driver or on any worker.

A spec holds everything that changes a run's rows: the model and threat cards (contents and hashes), the
dataset's identity, n, the seed, the batch size, the numerics (device type, torch, CPU threads; see
``bench.implementation``), the implementation identity of the code, and the sha256 of every trained
weight file the run uses. Its key is what the run id hashes. ``plan()`` resolves what a user typed into
a spec's parts and checks that model, threat and data fit, without building or training anything;
training is the driver's separate step (``bench.training.ensure_trained``) before ``spec_of()``.
``build()`` refuses, naming the difference, where this process's code, numerics, cards, data or weights
differ from the spec's, so a worker never computes rows of another run under its id.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.data import Dataset, from_tensors, load_dataset, subset_indices
from bench.devices import module_device, resolve_device
from bench.errors import BenchError, NotApplicable
from bench.implementation import differences, implementation, numerics
from bench.models.build import check_input, probes
from bench.models.card import ModelCard, closure, load_model_card, references
from bench.tasks import TASKS, Task
from bench.threats import Target, Threat, ThreatCard, make_threat, resolve_threat

MAX_SEED = 2**31 - 1
SPEC_VERSION = 1


class SpecError(BenchError):
    """A spec that this process cannot run as recorded (other code, numerics, cards, data or weights)."""


@dataclass
class Subject:
    """The model side of a run before anything is built: a card or a bare module, and its task."""

    card: ModelCard | None
    module: nn.Module | None
    name: str
    task: Task


@dataclass
class Plan:
    """What a user asked for, resolved and checked, before anything is built or trained."""

    subject: Subject
    threat_card: ThreatCard
    threat: Threat
    data: Dataset
    tensors: bool  # the data are tensors the caller holds (identified by content, not portable)
    positions: Tensor
    device: torch.device
    seed: int
    batch_size: int
    threads: int | None
    data_root: str | None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RunSpec:
    """Everything a run is; serialised into ``run.json`` and sent to workers."""

    model: dict[str, Any]  # id, hash, task, card (its contents; None for a bare module), source_dir
    threat: dict[str, Any]  # id, hash, family, card, source_dir
    dataset: dict[str, Any]  # name, identity, root, subset ("fixed": the fixed permutation; "first": tensors)
    n: int
    seed: int
    batch_size: int
    numerics: dict[str, Any]
    implementation: dict[str, Any]
    weights: dict[str, str]  # "<card id>@<training hash>" -> sha256 of every trained weight file used
    version: int = SPEC_VERSION

    @property
    def key(self) -> dict[str, Any]:
        """Everything that changes the run's rows; the run id is its hash."""
        return {"model": self.model["hash"], "weights": self.weights, "protocol": self.threat["hash"],
                "dataset": self.dataset["identity"], "n": self.n, "seed": self.seed, "batch_size": self.batch_size,
                "numerics": self.numerics, "implementation": self.implementation}

    @property
    def run_id(self) -> str:
        from bench.store import run_id_of

        return run_id_of(self.key)

    @property
    def portable(self) -> bool:
        """Whether a worker can rebuild the run from the spec alone (not a bare module or tensors in memory)."""
        return self.model["card"] is not None and self.dataset["subset"] == "fixed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        if not isinstance(data, dict) or data.get("version") != SPEC_VERSION:
            raise SpecError(f"not a run spec of version {SPEC_VERSION}",
                            "a spec comes from run.json of a run made by the same bench version")
        return cls(**data)


# --- plan ---------------------------------------------------------------------------------------------


def _subject(model: str | Path | ModelCard | nn.Module, task: str | None, model_name: str | None) -> Subject:
    if isinstance(model, nn.Module):
        return Subject(None, model, model_name or "module", TASKS.get(task or "classifier"))
    card = model if isinstance(model, ModelCard) else load_model_card(model)
    if task is not None and task != card.task:
        raise BenchError(f"model card {card.id} is a {card.task} card, not {task}", "drop task= for a card")
    return Subject(card, None, card.id, TASKS.get(card.task))


def _check_pairing(subject: Subject, card: ThreatCard, threat: Threat, data: Dataset) -> None:
    """Refuse a threat for another task or dataset before anything is built or trained."""
    accepted = type(threat).tasks
    if subject.task.name not in accepted:
        raise BenchError(f"threat {card.id} ({card.family}) evaluates {' or '.join(accepted)} models, but "
                         f"{subject.name} is a {subject.task.name} model",
                         f"`bench threats --task {subject.task.name}` lists the threats for it")
    if card.datasets and data.name not in card.datasets:
        raise BenchError(f"threat {card.id} is defined for {', '.join(card.datasets)}, not {data.name}",
                         "pick a threat card for this dataset (`bench threats` lists them)")
    for member in threat.member_cards():
        _check_pairing(subject, *make_threat(member), data)


def _check_supported(subject: Subject, card: ThreatCard, threat: Threat) -> None:
    """Refuse a threat that cannot evaluate a model of this kind (asked of the module, or of the card's own
    architecture with fresh weights) before anything is built or trained."""
    if subject.module is not None:
        modules = [subject.module]
    else:
        with torch.random.fork_rng(devices=[]):  # fresh weights draw from the global RNG: keep it as it was
            modules = [module for part, module in probes(subject.card) if part is subject.card]
    for module in modules:
        why = threat.unsupported(module)
        if why is not None:
            raise NotApplicable(f"threat {card.id} cannot evaluate {subject.name}: it {why.problem}", why.fix)
    for member in threat.member_cards():
        _check_supported(subject, *make_threat(member))


def _positions(data: Dataset, tensors: bool, n: int | None) -> Tensor:
    """The evaluation points: the first n of the fixed subset of a split (default 1000, or the whole split if
    smaller), or of the caller's tensors in their order (default all)."""
    if not tensors:
        return subset_indices(len(data), min(1000, len(data)) if n is None else n)
    if n is None or 0 < n <= len(data):
        return torch.arange(len(data))[:n]
    raise BenchError(f"n={n} is not between 1 and the {len(data)} images in x", f"pass n={len(data)} or less")


def plan(model: str | Path | ModelCard | nn.Module, threat: str | Path | ThreatCard, *, dataset: str | None = None,
         x: Tensor | None = None, y: Tensor | None = None, n: int | None = None, seed: int = 0,
         device: str | None = "auto", batch_size: int = 500, threads: int | None = None,
         data_root: str | Path | None = None, model_name: str | None = None, task: str | None = None,
         eps: float | str | None = None, norm: str | None = None) -> Plan:
    """Resolve the model, threat and data and check that they fit, building and training nothing. ``eps`` and
    ``norm`` run the threat at that ball: a card derived from it (``bench.threats.override``)."""
    if batch_size <= 0:
        raise BenchError(f"--batch-size must be positive, got {batch_size}", "pass e.g. --batch-size 256")
    if not 0 <= seed <= MAX_SEED:
        raise BenchError(f"--seed must be between 0 and {MAX_SEED}, got {seed}", "pass a smaller seed")
    if threads is not None and threads <= 0:
        raise BenchError(f"--threads must be positive, got {threads}", "pass e.g. --threads 1")
    subject = _subject(model, task, model_name)
    name = dataset or (subject.card.dataset if subject.card else None)
    threat_card, chosen = resolve_threat(threat, dataset=name or ("tensors" if x is not None else None),
                                         task=subject.task.name, eps=eps, norm=norm)
    if name is None and x is None and len(threat_card.datasets) == 1:
        name = threat_card.datasets[0]
    if x is not None:
        data = from_tensors(x, y, name=name or "tensors")
    elif name is None:
        raise BenchError("no dataset given for a bare nn.Module", "pass dataset='mnist' (or x=images, y=labels)")
    else:
        data = load_dataset(name, "test", data_root)
    threat_card, threat_obj = make_threat(threat_card)
    _check_pairing(subject, threat_card, threat_obj, data)
    _check_supported(subject, threat_card, threat_obj)
    dev = module_device(subject.module, device) if subject.module is not None else resolve_device(device)
    if subject.card is None or x is not None or data.name != subject.card.dataset:  # a card takes its own dataset
        check_input(subject.card or subject.module, subject.task, subject.name, data, dev, data_root)
    notes = [f"threat {threat}: the family's default card for {data.name} is {threat_card.id}"] if chosen else []
    if eps is not None or norm is not None:
        notes = [f"threat {getattr(threat, 'id', threat)}: {threat_card.id} is {threat_card.description} "
                 f"(protocol {threat_card.hash[:12]})"]
    return Plan(subject, threat_card, threat_obj, data, x is not None, _positions(data, x is not None, n), dev,
                seed, batch_size, threads, None if data_root is None else os.path.abspath(data_root), notes)


def threat_references(threat: Threat) -> list[ModelCard]:
    """The model cards a threat names in its params, and those its members (an ensemble's) name."""
    cards = references(threat.params)
    for member in threat.member_cards():
        cards += threat_references(make_threat(member)[1])
    return cards


def cards_used(subject_card: ModelCard | None, threat: Threat) -> list[ModelCard]:
    """Every model card a run builds: the model's, the cards it is built from, and those the threat names."""
    return closure(([subject_card] if subject_card is not None else []) + threat_references(threat))


# --- spec ---------------------------------------------------------------------------------------------


def _card_record(card: ModelCard | ThreatCard, **extra: Any) -> dict[str, Any]:
    return {"id": card.id, "hash": card.hash, **extra, "card": card.model_dump(mode="json"),
            "source_dir": None if card.source_dir is None else os.path.abspath(card.source_dir)}


def spec_of(p: Plan) -> RunSpec:
    """The run's spec, once every card it uses is trained (the weights' sha256 is part of it)."""
    from bench.models.assemble import trained_weights

    subject = p.subject
    if subject.card is not None:
        model = _card_record(subject.card, task=subject.task.name)
    else:
        if next(subject.module.parameters(), torch.zeros(0)).dtype == torch.float64:
            raise BenchError("the model's parameters are float64; bench evaluates float32 models",
                             "convert it with model.float()")
        digest, notes = _identify_module(subject.module, subject.task, p.data, p.positions, p.device)
        p.notes += notes
        model = {"id": subject.name, "hash": digest, "task": subject.task.name, "card": None, "source_dir": None}
    return RunSpec(
        model=model, threat=_card_record(p.threat_card, family=p.threat_card.family),
        dataset={"name": p.data.name, "identity": p.data.identity, "root": p.data_root,
                 "subset": "first" if p.tensors else "fixed"},
        n=len(p.positions), seed=p.seed, batch_size=p.batch_size, numerics=numerics(p.device, p.threads),
        implementation=implementation(p.threat_card.family, p.threat, subject.task),
        weights=trained_weights(cards_used(subject.card, p.threat)))


def _identify_module(module: nn.Module, task: Task, data: Dataset, positions: Tensor,
                     device: torch.device) -> tuple[str, list[str]]:
    from bench.identity import module_hash

    probe_x = data.x[positions[:8]].to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        outputs = [task.probe(module, probe_x) for _ in range(2)]
    digest, deterministic = module_hash(module, None if outputs[0] is None else outputs)
    notes = [] if deterministic else ["the model's outputs differ between two identical calls (randomness in its "
                                      "forward pass): use an attack built for randomized defences (EOT, "
                                      "autoattack-rand), and read single-draw robust accuracy with care"]
    return digest, notes


# --- build --------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """A run's parts in memory, built once per process: every shard of the run executes against it."""

    spec: RunSpec
    target: Target
    threat: Threat
    data: Dataset
    device: torch.device
    positions: Tensor

    @property
    def run_id(self) -> str:
        return self.spec.run_id


def _refuse(what: str, problems: list[str], fix: str) -> None:
    if problems:
        raise SpecError(f"{what} differ from the run's: {'; '.join(problems)}", fix)


def build(spec: RunSpec, *, device: str | torch.device | None = None, module: nn.Module | None = None,
          data: Dataset | None = None, trust_code: tuple[str, ...] = ()) -> Evaluation:
    """What the run's shards execute against, rebuilt from the spec in this process (``device``: where, of the
    spec's device type; ``module`` and ``data``: the caller's own, for a spec that is not portable)."""
    from bench.models.build import create
    from bench.models.assemble import trained_weights

    dev = resolve_device(device or spec.numerics["device"])
    here = numerics(dev, spec.numerics.get("threads"))
    _refuse("this process's numerics", differences(spec.numerics, here, ("in the run", "here")),
            "run every worker with the same torch on the same kind of device as the driver")
    threat_card, threat = make_threat(ThreatCard.model_validate({**spec.threat["card"],
                                                                 "source_dir": spec.threat["source_dir"]}))
    card = None
    if spec.model["card"] is not None:
        card = ModelCard.model_validate({**spec.model["card"], "source_dir": spec.model["source_dir"]})
    elif module is None:
        raise SpecError(f"run {spec.run_id} evaluates a bare module, which only the process holding it can run",
                        "write a model card for it to run it elsewhere")
    task = TASKS.get(spec.model["task"])
    _refuse("this process's code (implementation identity)",
            differences(spec.implementation, implementation(threat_card.family, threat, task), ("in the run", "here")),
            "run the same bench on the driver and every worker (a revision changes whenever numbers may)")
    mismatched = [f"{kind} card {c.id} hashes to {c.hash[:12]} here, {record['hash'][:12]} in the run"
                  for kind, c, record in (("threat", threat_card, spec.threat), ("model", card, spec.model))
                  if c is not None and c.hash != record["hash"]]
    _refuse("cards", mismatched, "give every worker the same card files (and the cards they refer to)")
    if data is None:
        if spec.dataset["subset"] != "fixed":
            raise SpecError(f"run {spec.run_id} evaluates tensors held in memory", "pass them as a dataset folder")
        data = load_dataset(spec.dataset["name"], "test", spec.dataset["root"])
    _refuse("the data", [f"{data.identity} here, {spec.dataset['identity']} in the run"]
            if data.identity != spec.dataset["identity"] else [], "give every worker the same dataset files")
    weights = trained_weights(cards_used(card, threat), missing_ok=True)
    _refuse("trained weights", [f"{name}: {weights.get(name, 'missing')} here" for name in spec.weights
                                if weights.get(name) != spec.weights[name]],
            "share the weight cache ($BENCH_CACHE) with every worker, or copy the driver's trained weights to it")
    net = create(card, device=dev, trust_code=trust_code) if card is not None else module
    positions = _positions(data, spec.dataset["subset"] != "fixed", spec.n)
    return Evaluation(spec, Target(net, card, task, data.num_classes), threat, data, dev, positions)
