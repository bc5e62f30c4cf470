"""The model card schema: what a model is, where its weights come from, how it was trained.

Cards may refer to other model cards (a CVAE, a translator, a base classifier, a teacher) through one
field type, ``model_ref(task)``: the reference is resolved relative to the referring card's folder,
checked to name a card of the right task, and folded into the referring card's hashes as the
referenced card's hash, so changing a referenced card changes every hash that depends on it.
"""
from __future__ import annotations

import re
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, ValidationInfo, field_validator, \
    model_validator

from bench.cards import ReferenceChainError, canonical_hash, check_chain, locate, read_card, validate
from bench.downloads import url_problem
from bench.errors import CardError
from bench.params import CardSchema
from bench.tasks import TASKS

if TYPE_CHECKING:
    from bench.models.compose import Composition
    from bench.recipes.base import Recipe

SHA256 = re.compile(r"^[0-9a-f]{64}$")
SOURCES = ("file", "package_file", "url", "robustbench", "entry_point")
PROSE = {"description", "paper", "license", "training_time"}  # in no hash: editing prose re-runs nothing
# Blocks added to the schema after cards already had hashes: left out of the hash while unset, so adding one
# did not re-key every existing card's weights and results.
LATER_BLOCKS = {"compose"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Architecture(Strict):
    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


class RobustBenchSource(Strict):
    name: str
    dataset: str = "cifar10"
    threat_model: str = "Linf"


class Weights(Strict):
    """Exactly one source, each file-like source with a sha256.

    ``file`` is relative to the card's folder; ``package_file`` is ``package/path/inside`` of an
    installed package (weights that ship in a wheel); ``url`` (https) is downloaded once and cached, and
    stops past ``size`` bytes if given (else past $BENCH_DOWNLOAD_MAX_BYTES).
    """

    file: str | None = None
    package_file: str | None = None
    url: str | None = None
    robustbench: RobustBenchSource | None = None
    entry_point: str | None = None
    sha256: str | None = None
    size: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> "Weights":
        sources = [s for s in SOURCES if getattr(self, s) is not None]
        if len(sources) != 1:
            raise ValueError(f"give exactly one of {', '.join(SOURCES)} (got {sources or 'none'})")
        if sources[0] in ("file", "package_file", "url"):
            if self.sha256 is None:
                raise ValueError(f"weights.{sources[0]} needs a sha256 (run `sha256sum FILE`)")
        if self.sha256 is not None and not SHA256.match(self.sha256):  # robustbench: optional, checked if given
            raise ValueError("sha256 must be 64 lower-case hex digits")
        if self.size is not None and self.url is None:
            raise ValueError("size is for url weights (the download's cap)")
        if self.url is not None and (problem := url_problem(self.url, allow_http=True)):
            raise ValueError(f"weights.url: {problem}")
        if self.package_file is not None and "/" not in self.package_file:
            raise ValueError("package_file must look like package/path/to/file")
        if self.entry_point is not None and not re.match(r"^[\w.]+:\w+$", self.entry_point):
            raise ValueError("entry_point must look like package.module:factory")
        return self

    @property
    def source(self) -> str:
        return next(s for s in SOURCES if getattr(self, s) is not None)

    @property
    def builds_model(self) -> bool:
        """RobustBench and entry points build the model themselves; other sources fill an architecture."""
        return self.source in ("robustbench", "entry_point")


class Normalization(Strict):
    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _positive(self) -> "Normalization":
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError("mean and std need one entry per channel, std > 0")
        return self


class Compose(Strict):
    """A model put together from other cards' models by a registered composer (``bench.models.compose``),
    e.g. a defence that translates inputs before a classifier: ``parts`` maps each role to a card."""

    name: str
    parts: dict[str, Any]  # role -> card reference, resolved by the composer's roles
    params: dict[str, Any] = Field(default_factory=dict)


class RecipeBlock(Strict):
    name: str
    seed: int = Field(0, ge=0, lt=2**31)
    params: dict[str, Any] = Field(default_factory=dict)


_hashing: ContextVar[tuple[str, ...]] = ContextVar("hashing", default=())


class ModelCard(CardSchema):
    id: str
    dataset: str
    task: str = "classifier"
    architecture: Architecture | None = None
    weights: Weights | None = None
    normalization: Normalization | None = None
    recipe: RecipeBlock | None = None
    compose: Compose | None = None
    paper: str | None = None
    license: str | None = None
    training_time: str | None = None  # what training on first use costs, in words ("about 25 min on 2 CPU cores")
    description: str | None = None
    version: int = 1
    # Set by the loader, not written in YAML: the folder that relative paths (weights, references) start from.
    source_dir: str | None = Field(default=None, exclude=True)

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS.names())}")
        return task

    @model_validator(mode="after")
    def _buildable(self) -> "ModelCard":
        if self.compose is not None:
            if self.architecture is not None or self.weights is not None or self.recipe is not None:
                raise ValueError("a compose: card is built from its parts; give no architecture, weights or recipe")
            return self
        if self.architecture is None and (self.weights is None or self.weights.builds_model is False):
            raise ValueError("an architecture is needed unless weights come from robustbench or an entry_point")
        if self.weights is None and self.recipe is None:
            raise ValueError("the card has neither weights nor a training recipe")
        return self

    def make_recipe(self) -> Recipe:
        """The card's training recipe with validated params (references resolved from this card's folder)."""
        if self.compose is not None:
            parts = ", ".join(f"bench train {ref.card.id}" for ref in self.composition.parts.values())
            raise CardError(f"model card {self.id} is composed from other cards; it is not trained itself",
                            f"train its parts instead ({parts}), or just run it: parts are trained on first use")
        if self.recipe is None:
            raise CardError(f"model card {self.id} has no training recipe", "add a recipe: block, or use its weights")
        return self._recipe

    @cached_property
    def _recipe(self) -> Recipe:
        from bench.recipes.base import make_recipe, recipes_for

        recipe = make_recipe(self.recipe.name, self.recipe.params, f"model card {self.id}",
                             context={"source_dir": self.source_dir})
        if self.task not in recipe.tasks:  # else training fails deep inside the loop, or trains nonsense
            raise CardError(f"model card {self.id}: recipe {self.recipe.name} trains {' or '.join(recipe.tasks)} "
                            f"models, not {self.task} ones",
                            f"a {self.task} card takes one of: {', '.join(recipes_for(self.task)) or 'none'}")
        return recipe

    def _dump(self, include: set[str] | None = None) -> dict[str, Any]:
        """The card as data without prose, plus its architecture's revision and its recipe's validated
        params (defaults written out, card references as those cards' hashes) and revisions: what an older
        revision or another referenced card built (weights, cached statistics, results) never passes for this
        card's."""
        from bench.models.archs import revision

        key, stack = f"{self.source_dir}/{self.id}", _hashing.get()
        check_chain("model", self.id, key, stack)
        token = _hashing.set(stack + (key,))
        try:
            unset = {name for name in LATER_BLOCKS if getattr(self, name) is None}
            data = self.model_dump(mode="json", include=include, exclude=PROSE | unset)
            if data.get("weights") is not None:
                del data["weights"]["size"]  # a download cap, implied by the sha256: not identity
            if data.get("architecture") is not None and (rev := revision(self.architecture.name)):
                data["architecture"]["revision"] = rev
            if data.get("recipe") is not None:
                data["recipe"] |= self._recipe_identity()
            if data.get("compose") is not None:
                data["compose"] = self.composition.identity()
            return data
        finally:
            _hashing.reset(token)

    def _recipe_identity(self) -> dict[str, Any]:
        """The recipe's validated params, and its revision and the training loop's where above 0 (left out at 0,
        so the hashes of weights trained before revisions were counted stay as they were)."""
        from bench.recipes.base import LOOP_REVISION

        recipe = self.make_recipe()
        out: dict[str, Any] = {"params": recipe.params.model_dump(mode="json")}
        if recipe.revision:
            out["revision"] = recipe.revision
        if LOOP_REVISION:
            out["loop"] = LOOP_REVISION
        return out

    @cached_property
    def composition(self) -> Composition:
        """The compose: block with its composer, parts resolved and params validated."""
        if self.compose is None:
            raise CardError(f"model card {self.id} is not a composition", "give it a compose: block")
        from bench.models.compose import composition

        return composition(self.compose, f"model card {self.id}", self.source_dir, self.dataset, resolve_ref)

    @cached_property
    def hash(self) -> str:
        return canonical_hash(self._dump())

    @cached_property
    def training_hash(self) -> str:
        """Identity of a trained result: only what changes the trained weights."""
        return canonical_hash(self._dump(include={"dataset", "architecture", "normalization", "recipe"}))

    @property
    def weights_path(self) -> Path | None:
        """The local weight file for file and package_file sources (None for others)."""
        if self.weights is None:
            return None
        if self.weights.file is not None:
            return Path(self.source_dir or ".") / self.weights.file
        if self.weights.package_file is not None:
            import importlib.util

            package, _, inner = self.weights.package_file.partition("/")
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                return Path(f"<package {package} is not installed>") / inner
            return Path(spec.submodule_search_locations[0]) / inner
        return None


def load_model_card(name: str | Path) -> ModelCard:
    """A card by id or file, or the card made for ``robustbench:NAME[:DATASET:THREAT]`` (``bench.models.zoo``)."""
    if isinstance(name, str) and name.startswith("robustbench:"):
        from bench.models.zoo import card_data

        return validate(ModelCard, card_data(name), f"model reference {name}")
    path = locate("model", name)
    data = read_card(path)
    data.setdefault("id", path.stem)
    return validate(ModelCard, {**data, "source_dir": str(path.parent.resolve())}, f"model card {path}")


def as_card(card: str | Path | ModelCard) -> ModelCard:
    """A card itself, or the card of an id or file."""
    return card if isinstance(card, ModelCard) else load_model_card(card)


# --- references between cards ------------------------------------------------------------------------


@dataclass(frozen=True)
class CardRef:
    """A model card named by another card: ``name`` as written there, ``card`` as resolved, and its hash
    (computed when the reference is checked, so a reference cycle is found there)."""

    name: str
    card: ModelCard
    hash: str


def resolve_ref(value: Any, source_dir: str | None, task: str | None) -> CardRef:
    """A card id, or a path relative to the referring card's folder (absolute paths as they are)."""
    if isinstance(value, CardRef):
        card = value.card
        value = value.name
    elif isinstance(value, str) and value:
        target = value
        if value.endswith((".yaml", ".yml")) and not Path(value).expanduser().is_absolute() and source_dir is not None:
            target = str(Path(source_dir) / value)
        try:
            card = load_model_card(target)
        except CardError as err:
            raise ValueError(err.problem) from None
    else:
        raise ValueError(f"a card reference is a model card id or a path to a card file, got {value!r}")
    if task is not None and card.task != task:
        raise ValueError(f"{card.id} is a {card.task} card, not a {task} card")
    try:
        return CardRef(value, card, card.hash)
    except ReferenceChainError:
        raise
    except CardError as err:
        raise ValueError(err.problem) from None


def model_ref(task: str | None = None):
    """The field type of a reference to a model card (of ``task``, if given), for card schemas."""
    def check(value: Any, info: ValidationInfo) -> CardRef:
        return resolve_ref(value, (info.context or {}).get("source_dir"), task)

    return Annotated[CardRef, PlainValidator(check), PlainSerializer(lambda ref: ref.hash, when_used="json")]


def references(value: Any) -> list[ModelCard]:
    """The model cards that validated params (or any value holding them) refer to, in order, each once."""
    found: dict[str, ModelCard] = {}

    def walk(item: Any) -> None:
        if isinstance(item, CardRef):
            found.setdefault(item.hash, item.card)
        elif isinstance(item, BaseModel):
            for name in type(item).model_fields:
                walk(getattr(item, name))
        elif isinstance(item, dict):
            for inner in item.values():
                walk(inner)
        elif isinstance(item, (list, tuple)):
            for inner in item:
                walk(inner)

    walk(value)
    return list(found.values())


def card_references(card: ModelCard) -> list[ModelCard]:
    """The cards a model card is built from: its composed parts and its recipe's referenced cards."""
    if card.compose is not None:
        return references(card.composition.parts)
    return references(card.make_recipe().params) if card.recipe is not None else []


def closure(cards: list[ModelCard]) -> list[ModelCard]:
    """The cards and every card they are built from, transitively, each once (references before referrers)."""
    out: dict[str, ModelCard] = {}

    def visit(card: ModelCard) -> None:
        if card.hash not in out:
            for ref in card_references(card):
                visit(ref)
            out[card.hash] = card

    for card in cards:
        visit(card)
    return list(out.values())
