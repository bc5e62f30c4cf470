"""Trust under hostile input, second pass (issue 18): a card that cannot be read breaks no other command, every
budget has a maximum, and a model that does not fit the data, cards that name each other in a loop or too deep,
or a weight file the user may not read end in a clear error, never a traceback or a run that never ends."""
from __future__ import annotations

import contextlib
import copy
import ctypes
import os
import shutil
import stat
import typing
from pathlib import Path

import pytest
import torch
import yaml
from catalogue import HOSTILE_CARDS
from pydantic import BaseModel, TypeAdapter, ValidationError
from safetensors.torch import save_file
from typer.testing import CliRunner

import bench
from bench.cli import app
from bench.errors import BenchError
from bench.models.weights import sha256_file
from bench.testing import threat_card

TINY = {"id": "tiny", "dataset": "digits", "architecture": {"name": "small-cnn", "kwargs": {"input_size": 8}},
        "recipe": {"name": "standard", "params": {"epochs": 1, "batch_size": 64, "train_subset": 128}}}


def cli(*args, code: int = 0) -> str:
    """Run `bench ARGS`: it must exit with ``code`` and, whatever happens, print no traceback."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code and "Traceback" not in result.output, result.output
    return result.output


def user_cards(root: Path, kind: str, cards: dict[str, str | dict]) -> Path:
    folder = root / kind
    folder.mkdir(parents=True, exist_ok=True)
    for name, card in cards.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(card if isinstance(card, str) else yaml.safe_dump(card))
    return folder


# --- 1. one card that cannot be read ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["deep-brackets", "long-integer", "impossible-date"])
def test_a_card_yaml_cannot_build_breaks_only_itself(tmp_path, monkeypatch, name):
    text, reason = HOSTILE_CARDS[f"{name}.yaml"]
    for kind in ("models", "attacks"):
        user_cards(tmp_path / "cards", kind, {f"{name}.yaml": text})
    monkeypatch.setenv("BENCH_CARDS", str(tmp_path / "cards"))
    assert "clean accuracy" in cli("run", "--model", "mnist-cnn-pgd-at", "--threat", "clean", "--n", "10",
                                   "--results", tmp_path / "r")
    for listing in ("threats", "models"):
        row = next(line for line in cli(listing).splitlines() if line.startswith(name))
        assert "invalid: " in row and any(part in row for part in reason.split("|"))
    assert "error: " in cli("run", "--model", "mnist-cnn-pgd-at", "--threat", name, code=2)
    assert "error: " in cli("run", "--model", name, "--threat", "clean", code=2)


def test_a_card_file_that_is_a_symlink_loop_breaks_only_itself(tmp_path, monkeypatch):
    folder = user_cards(tmp_path / "cards", "attacks", {})
    (folder / "a.yaml").symlink_to(folder / "b.yaml")
    (folder / "b.yaml").symlink_to(folder / "a.yaml")
    (folder / "gone.yaml").symlink_to(folder / "nowhere.yaml")
    monkeypatch.setenv("BENCH_CARDS", str(tmp_path / "cards"))
    listing = cli("threats")
    assert all(any(line.startswith(n) and "invalid: " in line for line in listing.splitlines())
               for n in ("a ", "b ", "gone"))


# --- 2. budgets -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family, params, field, maximum", [
    ("pgd", {"norm": "L2", "eps": 1.0, "steps": 10**12}, "steps", "100,000"),
    ("pgd", {"norm": "L2", "eps": 1.0, "steps": 10, "restarts": 10**9}, "restarts", "100,000"),
    ("pgd-transfer", {"norm": "L2", "eps": 1.0, "steps": 2**40, "source": "mnist-cnn-standard"}, "steps", "100,000"),
    ("vae-margin", {"r": 1.0, "samples": 10**9}, "samples", "10,000,000"),
    ("vae-margin", {"r": 1.0, "bisection": 10**6}, "bisection", "100,000"),
    ("vae-certified-elbo", {"eps": 0.1, "restarts": 10**6}, "restarts", "100,000"),
])
def test_a_threat_budget_beyond_its_maximum_is_refused(tmp_path, family, params, field, maximum):
    card = user_cards(tmp_path, "attacks", {"big.yaml": {"id": "big", "family": family, "params": params}})
    model = user_cards(tmp_path, "models", {"tiny.yaml": TINY})
    out = cli("run", "--model", model / "tiny.yaml", "--threat", card / "big.yaml", "--n", "5", code=2)
    assert f"field {field!r}: must be between 1 and {maximum}" in out


@pytest.mark.parametrize("params, field, maximum", [
    ({"epochs": 10**12}, "epochs", "100,000"),
    ({"epochs": 1, "batch_size": 10**9}, "batch_size", "10,000,000"),
    ({"epochs": 1, "validation": {"size": 10**8}}, "validation.size", "10,000,000"),
    ({"epochs": 1, "norm": "Linf", "eps": 0.1, "steps": 10**6, "step_size": 0.01}, "steps", "100,000"),
])
def test_a_training_budget_beyond_its_maximum_is_refused(tmp_path, params, field, maximum):
    recipe = {"name": "pgd-at" if "steps" in params else "standard", "params": params}
    card = user_cards(tmp_path, "models", {"big.yaml": {**TINY, "recipe": recipe}})
    out = cli("train", card / "big.yaml", code=2)
    assert f"field {field!r}: must be between 1 and {maximum}" in out


def _int_fields(schema: type[BaseModel], seen: set) -> typing.Iterator[tuple[str, typing.Any]]:
    """(name, field) of every int field of a params schema and of the schemas nested in it."""
    if schema in seen:
        return
    seen.add(schema)
    for name, field in schema.model_fields.items():
        stack = [field.annotation]
        while stack:
            kind = stack.pop()
            if kind is int:
                yield f"{schema.__qualname__}.{name}", field
            elif isinstance(kind, type) and issubclass(kind, BaseModel):
                yield from _int_fields(kind, seen)
            else:
                stack += typing.get_args(kind)


def test_every_int_param_of_every_family_recipe_and_composer_is_bounded():
    from bench.families.learned_sets.pairs import PAIR_SOURCES
    from bench.models.compose import COMPOSERS
    from bench.recipes.base import RECIPES
    from bench.threats import THREAT_FAMILIES

    geometry = {"Thicken.size", "Thicken.shift"}  # pixel sizes of a perturbation, not budgets
    schemas = [cls.Params for registry in (THREAT_FAMILIES, RECIPES, COMPOSERS) for _, cls in registry.items()]
    schemas += [cls for _, cls in PAIR_SOURCES.items()]
    seen: set = set()
    unbounded = []
    for schema in schemas:
        for name, field in _int_fields(schema, seen):
            try:
                TypeAdapter(typing.Annotated[(field.annotation, *field.metadata)]
                            if field.metadata else field.annotation).validate_python(10**12)
            except ValidationError:
                continue
            unbounded.append(name)
    assert sorted(set(unbounded) - geometry) == [], "give these fields a maximum (bench.params.Steps or Samples)"


# --- 3a. a model that does not take the data -------------------------------------------------------------


def test_a_card_run_on_data_of_another_shape_is_refused_before_anything_runs(tmp_path):
    out = cli("run", "--model", "mnist-cnn-pgd-at", "--threat", "clean", "--dataset", "digits", "--n", "10",
              "--results", tmp_path, code=2)
    assert "mnist-cnn-pgd-at" in out and "digits" in out and "(1, 8, 8)" in out and "(1, 28, 28)" in out
    assert not list(tmp_path.rglob("*.parquet"))


@pytest.mark.parametrize("x, message", [
    (torch.rand(10, 8, 8, 1), r"shape \(8, 8, 1\).*\n.*x.permute\(0, 3, 1, 2\)"),
    (torch.rand(10, 3, 8, 8), r"shape \(3, 8, 8\).*expected input\[1, 3, 8, 8\] to have 1 channels"),
    (torch.rand(10, 1, 28, 28), r"shape \(1, 28, 28\).*mat1 and mat2"),
])
def test_tensors_a_module_cannot_take_are_refused_before_anything_runs(digits_model, digits_card, tmp_path, x,
                                                                       message):
    y = torch.zeros(10, dtype=torch.long)
    training = copy.deepcopy(digits_model).train()
    rng = torch.get_rng_state()
    for model in (training, str(digits_card)):
        with pytest.raises(BenchError, match=message):
            bench.evaluate(model, threat_card("pgd", norm="Linf", eps=0.1, steps=2), x=x, y=y, results=tmp_path,
                           progress=False)
    assert torch.equal(torch.get_rng_state(), rng) and training.training


# --- 3b. cards that name cards ----------------------------------------------------------------------------


def test_a_composed_card_naming_itself_through_dotdot_is_a_cycle(tmp_path, monkeypatch):
    folder = user_cards(tmp_path / "cards", "models", {"here/self.yaml": {
        "id": "self", "dataset": "mnist", "compose": {"name": "translate-then-classify", "parts": {
            "classifier": "../here/self.yaml", "translator": "mnist-ood2id-translator"}}}})
    assert "reference cycle" in cli("run", "--model", folder / "here" / "self.yaml", "--threat", "clean", code=2)
    monkeypatch.setenv("BENCH_CARDS", str(tmp_path / "cards"))
    assert "reference cycle" in cli("run", "--model", "self", "--threat", "clean", code=2)


def test_an_ensemble_naming_itself_is_a_cycle_and_breaks_only_itself(tmp_path, monkeypatch):
    user_cards(tmp_path / "cards", "attacks", {
        "sub/ens.yaml": {"id": "ens", "family": "ensemble", "params": {"members": ["../sub/ens.yaml", "pgd-linf-0.3"]}},
        "sub/a.yaml": {"id": "a", "family": "ensemble", "params": {"members": ["b.yaml", "pgd-linf-0.3"]}},
        "sub/b.yaml": {"id": "b", "family": "ensemble", "params": {"members": ["a.yaml", "pgd-linf-0.3"]}}})
    monkeypatch.setenv("BENCH_CARDS", str(tmp_path / "cards"))
    rows = [line for line in cli("threats").splitlines() if line.startswith(("ens ", "a ", "b "))]
    assert len(rows) == 3 and all("invalid: " in row and "reference cycle" in row for row in rows)
    assert "reference cycle" in cli("run", "--model", "mnist-cnn-pgd-at", "--threat", "ens", code=2)


def test_a_chain_of_150_composed_cards_is_refused_clearly(tmp_path):
    cards = {f"c{i}.yaml": {"id": f"c{i}", "dataset": "mnist", "compose": {"name": "translate-then-classify", "parts": {
        "classifier": f"c{i + 1}.yaml" if i < 149 else "mnist-cnn-standard", "translator": "mnist-ood2id-translator"}}}
        for i in range(150)}
    folder = user_cards(tmp_path, "models", cards)
    assert "more than 16 deep" in cli("run", "--model", folder / "c0.yaml", "--threat", "clean", code=2)


@pytest.fixture(scope="module")
def mnist_translator(tmp_path_factory) -> Path:
    """A translator card for MNIST with (untrained) weights of its own: nothing to train."""
    from bench.models.archs import build

    folder = tmp_path_factory.mktemp("translator")
    save_file(build("residual-unet", {"channels": 1, "width": 4}, "test").state_dict(), str(folder / "t.safetensors"))
    (folder / "t.yaml").write_text(yaml.safe_dump({
        "id": "tiny-translator", "dataset": "mnist", "task": "translator",
        "architecture": {"name": "residual-unet", "kwargs": {"channels": 1, "width": 4}},
        "weights": {"file": "t.safetensors", "sha256": sha256_file(folder / "t.safetensors")}}))
    return folder / "t.yaml"


def test_a_composed_card_with_a_part_for_another_dataset_is_refused(tmp_path, digits_card, mnist_translator):
    folder = user_cards(tmp_path, "models", {"mixed.yaml": {
        "id": "mixed", "dataset": "digits", "compose": {"name": "translate-then-classify", "parts": {
            "classifier": str(digits_card), "translator": str(mnist_translator)}}}})
    out = cli("run", "--model", folder / "mixed.yaml", "--threat", "clean", "--results", tmp_path, code=2)
    assert "compose.parts.translator: tiny-translator is made for mnist" in out


# --- 3c. weight files -------------------------------------------------------------------------------------


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


OVERRIDE = (1 << 1) | (1 << 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH: what lets root read any file


@contextlib.contextmanager
def as_a_user():
    """File permissions as a user meets them. Root reads any file only through its capabilities to override them:
    those are dropped from this thread meanwhile, so root still reads what it owns (the checkout and the
    environment, wherever they lie: a checkout in a folder only root may enter defeated dropping to nobody) but
    not a file whose mode forbids it."""
    if os.geteuid() != 0:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    held = data[0].effective
    data[0].effective = held & ~OVERRIDE
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
    try:
        yield
    finally:
        data[0].effective = held
        libc.capset(ctypes.byref(header), data)


def test_a_weight_file_the_user_cannot_read_is_a_clear_error(digits_card, monkeypatch, tmp_path):
    for name in ("digits-cnn.yaml", "digits-cnn.safetensors"):
        shutil.copy(digits_card.parent / name, tmp_path / name)
    (tmp_path / "digits-cnn.safetensors").chmod(0)
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    with as_a_user():
        out = cli("run", "--model", tmp_path / "digits-cnn.yaml", "--threat", "clean", "--results", tmp_path / "r",
                  code=2)
    assert "digits-cnn.safetensors cannot be read (Permission denied)" in out and "chmod a+r" in out


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_trained_weights_are_readable_as_the_umask_allows(tmp_path, umask):
    card = user_cards(tmp_path, "models", {"tiny.yaml": {**TINY, "id": f"tiny-{umask:o}"}})
    old = os.umask(umask)
    try:
        out = cli("train", card / "tiny.yaml", "--results", tmp_path / "r")
    finally:
        os.umask(old)
    path = Path(out.split("trained weights", 1)[1].split()[0])
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
