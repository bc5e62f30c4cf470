"""Model and threat cards: the shipped catalogue, schema errors, include:, protocol hashes, user folders."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
import yaml

from bench.threats import THREAT_FAMILIES, ThreatCard, load_threat_card, make_threat
from bench.cards import builtin_root, catalogue, locate, read_card
from bench.data import names as dataset_names
from bench.errors import CardError
from bench.models import create, load_model_card
from bench.models.archs import build
from bench.training import build_trained, train
from bench.models.wrapper import Normalized

INPUT_SHAPES = {"mnist": (1, 28, 28), "mnist42": (1, 42, 42), "cifar10": (3, 32, 32), "digits": (1, 8, 8)}


def _builtin_ids(kind: str) -> list[str]:
    """The shipped catalogue, whatever $BENCH_CARDS says in the shell that runs pytest."""
    saved = os.environ.pop("BENCH_CARDS", None)
    try:
        return sorted(catalogue(kind).cards)
    finally:
        if saved is not None:
            os.environ["BENCH_CARDS"] = saved


MODEL_IDS = _builtin_ids("model")
THREAT_IDS = _builtin_ids("threat")


def _write(path: Path, data: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def _model(**over) -> dict:
    card = {"id": "test-model", "dataset": "digits",
            "architecture": {"name": "small-cnn", "kwargs": {"input_size": 8, "width": 4, "hidden": 16}},
            "recipe": {"name": "standard", "params": {"epochs": 1}}}
    card.update(over)
    return {k: v for k, v in card.items() if v is not None}


def _threat(**over) -> dict:
    card = {"id": "test-threat", "family": "pgd", "params": {"norm": "Linf", "eps": 0.1, "steps": 5}}
    card.update(over)
    return card


SHA = "0" * 64


# --- the shipped catalogue ---------------------------------------------------------------------------


def test_the_catalogue_holds_the_shipped_cards_and_skips_include_bases():
    assert {"mnist-cnn-standard", "mnist-cnn-pgd-at", "cifar10-resnet18-standard"} <= set(MODEL_IDS)
    assert {"clean", "pgd-linf-0.3", "autoattack-linf-8/255"} <= set(THREAT_IDS)
    assert not any(card_id.startswith("_") for card_id in MODEL_IDS + THREAT_IDS)
    assert all(builtin_root() / "models" in path.parents for path in catalogue("model").cards.values())
    assert any(path.parent != builtin_root() / "models" for path in catalogue("model").cards.values()), \
        "card folders nested by family are searched"


@pytest.mark.parametrize("card_id", MODEL_IDS)
def test_every_shipped_model_card_validates(card_id):
    card = load_model_card(card_id)
    assert card.id == card_id
    assert card.dataset in dataset_names()
    assert card.weights is not None or card.recipe is not None or card.composition.parts
    assert re.fullmatch(r"[0-9a-f]{64}", card.hash)
    if card.recipe is not None:  # the recipe name and params are valid too
        assert card.make_recipe().params.epochs > 0


@pytest.mark.parametrize("card_id", [i for i in MODEL_IDS if load_model_card(i).architecture is not None])
def test_every_shipped_architecture_builds_and_runs(card_id):
    card = load_model_card(card_id)
    torch.manual_seed(0)
    net = build(card.architecture.name, card.architecture.kwargs, card_id)
    if card.normalization is not None:
        net = Normalized(net, card.normalization.mean, card.normalization.std)
    batch = 1 if card.architecture.name == "wrn" else 2  # WRN-28-10 is big: keep its forward pass small
    x = torch.rand(batch, *INPUT_SHAPES[card.dataset])
    with torch.no_grad():
        if card.task == "perturbation-set":  # a perturbation set maps an image to images of the same shape
            mu_p, _ = net.eval().prior(x)
            out = net.perturb(x, torch.randn_like(mu_p))
            assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
        elif card.task in ("translator", "generative"):  # images in, images (translations, reconstructions) out
            out = net.eval()(x)
            assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
        else:
            out = net.eval()(x)
            assert out.shape == (batch, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("card_id", [i for i in MODEL_IDS if load_model_card(i).weights_path is not None])
def test_shipped_weight_files_match_their_sha256(card_id):
    from bench.models.weights import sha256_file

    card = load_model_card(card_id)
    assert card.weights_path.is_file()
    assert sha256_file(card.weights_path) == card.weights.sha256


@pytest.mark.parametrize("card_id", THREAT_IDS)
def test_every_shipped_threat_card_validates_and_builds(card_id):
    card = load_threat_card(card_id)
    assert card.id == card_id
    assert card.family in THREAT_FAMILIES
    assert all(d in dataset_names() for d in card.datasets)
    built_card, threat = make_threat(card_id)
    assert built_card == card
    assert type(threat) is THREAT_FAMILIES.get(card.family)
    assert re.fullmatch(r"[0-9a-f]{64}", card.hash)


def test_included_base_values_reach_the_shipped_cards():
    card = load_threat_card("pgd-linf-0.3")
    assert card.datasets == ["mnist"]
    assert card.params == {"norm": "Linf", "eps": 0.3, "steps": 40, "step_size": 0.01, "restarts": 1}
    model = load_model_card("mnist-cnn-standard")
    assert model.architecture.name == "small-cnn" and model.dataset == "mnist"


# --- model card validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("change, field, words", [
    (dict(architecture=None, architectur={"name": "small-cnn"}), "architectur", "unknown field"),
    (dict(recipe=None), "(card)", "neither weights nor a training recipe"),
    (dict(weights={"file": "w.safetensors"}), "weights", "needs a sha256"),
    (dict(weights={"file": "w.safetensors", "sha256": "ABC123"}), "weights", "64 lower-case hex digits"),
    (dict(weights={"file": "w.safetensors", "sha256": SHA.upper().replace("0", "A")}), "weights", "lower-case"),
    (dict(weights={"url": "https://example.org/w.pt", "sha256": SHA[:-1]}), "weights", "64 lower-case hex"),
    (dict(weights={"file": "w.safetensors", "url": "https://example.org/w.pt", "sha256": SHA}), "weights",
     "exactly one of"),
    (dict(weights={"sha256": SHA}), "weights", "exactly one of"),
    (dict(weights={"package_file": "no-slash.pt", "sha256": SHA}), "weights", "package/path"),
    (dict(weights={"entry_point": "not an entry point"}), "weights", "package.module:factory"),
    (dict(architecture=None), "(card)", "an architecture is needed"),
    (dict(task="detector"), "task", "classifier"),
    (dict(normalization={"mean": [0.5], "std": [0.0]}), "normalization", "std > 0"),
], ids=["typo", "no-weights-no-recipe", "no-sha256", "bad-sha256", "upper-sha256", "short-sha256",
        "two-sources", "no-source", "package-file", "entry-point", "no-architecture", "task", "std"])
def test_model_card_errors_name_the_card_and_the_field(tmp_path, change, field, words):
    path = _write(tmp_path / "bad-model.yaml", _model(**change))
    with pytest.raises(CardError) as err:
        load_model_card(path)
    problem = err.value.problem
    assert str(path.resolve()) in problem or str(path) in problem
    assert f"field {field!r}" in problem
    assert words in problem
    assert field in err.value.fix


def test_a_card_must_be_a_yaml_mapping(tmp_path):
    with pytest.raises(CardError, match="YAML mapping"):
        load_model_card(_write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(CardError, match="not valid YAML"):
        load_model_card(_write(tmp_path / "broken.yaml", "id: [unclosed\n"))


def test_unknown_architecture_suggests_the_near_miss(tmp_path):
    card = load_model_card(_write(tmp_path / "arch.yaml",
                                  _model(architecture={"name": "small-cn", "kwargs": {"input_size": 8}})))
    with pytest.raises(CardError) as err:
        build_trained(card)
    assert "model card test-model" in err.value.problem
    assert "unknown architecture 'small-cn'" in err.value.problem
    assert "did you mean 'small-cnn'?" in err.value.fix


def test_bad_architecture_kwargs_are_a_card_error(tmp_path):
    card = load_model_card(_write(tmp_path / "kw.yaml", _model(architecture={"name": "lenet", "kwargs": {"widht": 3}})))
    with pytest.raises(CardError, match="bad kwargs for architecture 'lenet'"):
        build_trained(card)


def test_unknown_recipe_suggests_the_near_miss(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    bad_recipe = _model(recipe={"name": "standrd", "params": {"epochs": 1}})
    card = load_model_card(_write(tmp_path / "recipe.yaml", bad_recipe))
    for action in (create, train):
        with pytest.raises(CardError) as err:
            action(card)
        assert "model card test-model" in err.value.problem
        assert "unknown recipe 'standrd'" in err.value.problem
        assert "did you mean 'standard'?" in err.value.fix
    assert not list((tmp_path / "cache").rglob("*.safetensors")), "nothing is trained for a bad recipe"


def test_bad_recipe_params_are_a_card_error(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    card = load_model_card(_write(tmp_path / "p.yaml", _model(recipe={"name": "standard", "params": {"epochs": 0}})))
    with pytest.raises(CardError) as err:
        train(card)
    assert "recipe.params" in err.value.problem and "'epochs'" in err.value.problem


# --- threat card validation --------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [-0.1, 0, "0", "8/0", "abc", "", True, [0.1], 8, "8", 1.5],
                         ids=["negative", "zero", "zero-text", "div-zero", "text", "empty", "bool", "list",
                              "linf-8", "linf-8-text", "linf-1.5"])
def test_bad_eps_is_a_card_error_naming_the_card(tmp_path, eps):
    path = _write(tmp_path / "eps.yaml", _threat(params={"norm": "Linf", "eps": eps, "steps": 5}))
    with pytest.raises(CardError) as err:
        make_threat(path)
    assert "threat card test-threat" in err.value.problem
    assert "eps" in err.value.problem


@pytest.mark.parametrize("family", ["pgd", "autoattack"])
@pytest.mark.parametrize("text, value", [("8/255", 8 / 255), (" 2/255 ", 2 / 255), ("0.3", 0.3), (0.3, 0.3), (1, 1.0)])
def test_eps_accepts_numbers_and_fractions(tmp_path, family, text, value):
    params = {"norm": "Linf", "eps": text} | ({"steps": 5} if family == "pgd" else {})
    _, threat = make_threat(_write(tmp_path / "ok.yaml", _threat(family=family, params=params)))
    assert isinstance(threat.params.eps, float)
    assert threat.params.eps == value


def test_l2_eps_may_exceed_one(tmp_path):
    _, threat = make_threat(_write(tmp_path / "l2.yaml", _threat(params={"norm": "L2", "eps": 8, "steps": 5})))
    assert threat.params.eps == 8.0


def test_unknown_family_suggests_the_near_miss(tmp_path):
    path = _write(tmp_path / "fam.yaml", _threat(family="autoatack"))
    with pytest.raises(CardError) as err:
        make_threat(path)
    assert "threat card test-threat" in err.value.problem
    assert "unknown threat family 'autoatack'" in err.value.problem
    assert "did you mean 'autoattack'?" in err.value.fix


@pytest.mark.parametrize("params, field", [
    ({"norm": "Linf", "eps": 0.1, "steps": 5, "stpes": 3}, "stpes"),
    ({"norm": "L3", "eps": 0.1, "steps": 5}, "norm"),
    ({"norm": "Linf", "eps": 0.1, "steps": 0}, "steps"),
    ({"norm": "Linf", "eps": 0.1}, "steps"),
])
def test_bad_family_params_name_the_field(tmp_path, params, field):
    with pytest.raises(CardError) as err:
        make_threat(_write(tmp_path / "params.yaml", _threat(params=params)))
    assert "threat card test-threat params" in err.value.problem
    assert f"field {field!r}" in err.value.problem


def test_unknown_threat_card_field_names_the_path(tmp_path):
    path = _write(tmp_path / "typo.yaml", {**_threat(), "descripton": "typo"})
    with pytest.raises(CardError) as err:
        load_threat_card(path)
    assert str(path) in err.value.problem
    assert "field 'descripton'" in err.value.problem and "unknown field" in err.value.problem


def test_threat_card_id_defaults_to_the_file_name(tmp_path):
    data = _threat()
    del data["id"]
    assert load_threat_card(_write(tmp_path / "my-threat.yaml", data)).id == "my-threat"


# --- include: ----------------------------------------------------------------------------------------


def test_include_merges_nested_dicts_and_the_child_wins(tmp_path):
    _write(tmp_path / "bases" / "_grand.yaml", {"license": "MIT", "paper": "grand", "task": "classifier"})
    _write(tmp_path / "bases" / "_parent.yaml", {
        "include": "_grand.yaml",  # relative to the including card's folder
        "dataset": "digits", "paper": "parent", "description": "parent",
        "architecture": {"name": "small-cnn", "kwargs": {"input_size": 8, "width": 4}},
        "recipe": {"name": "standard", "params": {"epochs": 3, "lr": 0.01}},
    })
    child = _write(tmp_path / "cards" / "child.yaml", {
        "include": "../bases/_parent.yaml", "id": "child", "description": "child",
        "architecture": {"kwargs": {"hidden": 16}},
        "recipe": {"params": {"epochs": 1}},
    })
    data = read_card(child)
    assert "include" not in data
    assert data["description"] == "child" and data["paper"] == "parent" and data["license"] == "MIT"
    assert data["architecture"] == {"name": "small-cnn", "kwargs": {"input_size": 8, "width": 4, "hidden": 16}}
    assert data["recipe"] == {"name": "standard", "params": {"epochs": 1, "lr": 0.01}}
    card = load_model_card(child)
    assert card.architecture.kwargs == {"input_size": 8, "width": 4, "hidden": 16}
    assert card.recipe.params == {"epochs": 1, "lr": 0.01}
    assert card.source_dir == str(child.parent)


def test_a_child_value_replaces_a_parent_dict_and_lists_are_replaced(tmp_path):
    _write(tmp_path / "_p.yaml", {"datasets": ["mnist", "cifar10"], "params": {"norm": "Linf", "eps": 0.1}})
    child = _write(tmp_path / "c.yaml", {"include": "_p.yaml", "id": "c", "family": "clean", "datasets": ["digits"]})
    card = load_threat_card(child)
    assert card.datasets == ["digits"]
    assert card.params == {"norm": "Linf", "eps": 0.1}


@pytest.mark.parametrize("layout", ["self", "pair", "triangle"])
def test_include_cycle_is_a_card_error(tmp_path, layout):
    files = {"self": {"a": "a"}, "pair": {"a": "b", "b": "a"}, "triangle": {"a": "b", "b": "c", "c": "a"}}[layout]
    for name, target in files.items():
        _write(tmp_path / f"{name}.yaml", {"include": f"{target}.yaml", "id": name, "family": "clean"})
    with pytest.raises(CardError, match="include cycle"):
        load_threat_card(tmp_path / "a.yaml")


def test_missing_include_is_a_card_error(tmp_path):
    path = _write(tmp_path / "a.yaml", {"include": "_nowhere.yaml", "id": "a", "family": "clean"})
    with pytest.raises(CardError, match="does not exist") as err:
        load_threat_card(path)
    assert "_nowhere.yaml" in err.value.problem


def test_a_chain_of_includes_is_not_a_cycle(tmp_path):
    _write(tmp_path / "_base.yaml", {"family": "clean"})
    _write(tmp_path / "_left.yaml", {"include": "_base.yaml", "description": "left"})
    _write(tmp_path / "_right.yaml", {"include": "_left.yaml", "version": 2})
    path = _write(tmp_path / "top.yaml", {"include": "_right.yaml", "id": "top"})
    card = load_threat_card(path)
    assert (card.family, card.description, card.version) == ("clean", "left", 2)


# --- protocol hash -----------------------------------------------------------------------------------


def _hash(tmp_path: Path, name: str, **over) -> str:
    return load_threat_card(_write(tmp_path / f"{name}.yaml", _threat(**over))).hash


def test_protocol_hash_is_the_same_for_a_fraction_and_its_value(tmp_path):
    as_fraction = _hash(tmp_path, "a", params={"norm": "Linf", "eps": "8/255", "steps": 5})
    as_number = _hash(tmp_path, "b", params={"norm": "Linf", "eps": 0.03137254901960784, "steps": 5})
    assert as_fraction == as_number
    assert as_fraction == _hash(tmp_path, "c", id="another-id", params={"norm": "Linf", "eps": 8 / 255, "steps": 5})


def test_protocol_hash_changes_with_the_protocol_not_the_prose(tmp_path):
    base = _hash(tmp_path, "base", params={"norm": "Linf", "eps": "8/255", "steps": 5})
    assert base != _hash(tmp_path, "eps", params={"norm": "Linf", "eps": "4/255", "steps": 5})
    assert base != _hash(tmp_path, "steps", params={"norm": "Linf", "eps": "8/255", "steps": 6})
    assert base != _hash(tmp_path, "version", version=2, params={"norm": "Linf", "eps": "8/255", "steps": 5})
    assert base != _hash(tmp_path, "family", family="autoattack", params={"norm": "Linf", "eps": "8/255"})
    assert base == _hash(tmp_path, "prose", description="a long explanation",
                         params={"norm": "Linf", "eps": "8/255", "steps": 5})
    # a default written out is the same protocol as the default left out
    assert base == _hash(tmp_path, "defaults", params={"norm": "Linf", "eps": "8/255", "steps": 5, "restarts": 1})


def test_the_shipped_8_255_card_hashes_like_its_float_twin():
    shipped = load_threat_card("autoattack-linf-8/255")
    twin = ThreatCard(id="twin", family="autoattack", datasets=["cifar10"],
                      params={"norm": "Linf", "eps": 0.03137254901960784, "version": "standard"})
    assert shipped.hash == twin.hash


# --- user card folders and lookup --------------------------------------------------------------------


@pytest.fixture
def user_cards(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "my-cards"
    _write(root / "attacks" / "my-clean.yaml", {"id": "clean", "family": "clean", "description": "mine"})
    _write(root / "attacks" / "ratio.yaml", {"id": "pgd-linf-4/255", "family": "pgd",
                                             "params": {"norm": "Linf", "eps": "4/255", "steps": 3}})
    _write(root / "models" / "my-model.yaml", _model(id="my-model"))
    _write(root / "models" / "_base.yaml", {"dataset": "digits"})  # a base, not a card
    monkeypatch.setenv("BENCH_CARDS", str(root))
    return root


def test_a_user_card_overrides_a_builtin_id_with_a_warning(user_cards):
    with pytest.warns(UserWarning, match=r"overrides the threat card 'clean'") as record:
        found = catalogue("threat").cards
    assert len(record) == 1 and str(user_cards / "attacks" / "my-clean.yaml") in str(record[0].message)
    assert found["clean"] == user_cards / "attacks" / "my-clean.yaml"
    assert set(THREAT_IDS) <= set(found)
    # warned once per process: a later look-up is silent (and warnings are errors in this suite)
    assert load_threat_card("clean").description == "mine"


def test_a_user_card_folder_adds_new_ids(user_cards):
    found = catalogue("model").cards  # no overlap with built-ins: no warning (warnings are errors here)
    assert found["my-model"] == user_cards / "models" / "my-model.yaml"
    assert set(MODEL_IDS) <= set(found)
    assert "_base" not in found
    assert load_model_card("my-model").source_dir == str(user_cards / "models")


def test_several_user_folders_later_ones_win(user_cards, tmp_path, monkeypatch):
    second = tmp_path / "second"
    _write(second / "models" / "x.yaml", _model(id="my-model", description="second"))
    monkeypatch.setenv("BENCH_CARDS", os.pathsep.join([str(user_cards), str(second)]))
    with pytest.warns(UserWarning, match="overrides the model card 'my-model'"):
        assert locate("model", "my-model") == second / "models" / "x.yaml"


def test_ids_with_a_slash_resolve(user_cards, monkeypatch):
    monkeypatch.delenv("BENCH_CARDS")
    assert locate("threat", "autoattack-linf-8/255") == builtin_root() / "attacks" / "autoattack-linf-8-255.yaml"
    assert make_threat("autoattack-linf-8/255")[1].params.eps == 8 / 255
    monkeypatch.setenv("BENCH_CARDS", str(user_cards))
    with pytest.warns(UserWarning, match="'clean'"):  # the clean override in the same user folder
        assert locate("threat", "autoattack-linf-8/255").parent == builtin_root() / "attacks"
    assert locate("threat", "pgd-linf-4/255") == user_cards / "attacks" / "ratio.yaml"
    card, threat = make_threat("pgd-linf-4/255")
    assert card.id == "pgd-linf-4/255" and threat.params.eps == 4 / 255


def test_the_same_id_twice_in_one_folder_is_a_card_error(tmp_path, monkeypatch):
    root = tmp_path / "dup"
    _write(root / "attacks" / "a.yaml", {"id": "twin", "family": "clean"})
    _write(root / "attacks" / "b.yaml", {"id": "twin", "family": "clean"})
    monkeypatch.setenv("BENCH_CARDS", str(root))
    with pytest.raises(CardError, match="'twin' is defined twice"):
        locate("threat", "twin")
    assert load_threat_card("clean").family == "clean"  # the clash affects only the clashing id


@pytest.mark.parametrize("kind, name, suggestion", [
    ("threat", "autoatack-linf-0.3", "autoattack-linf-0.3"),
    ("threat", "autoattack-linf-8/256", "autoattack-linf-8/255"),
    ("model", "mnist-cnn-standrd", "mnist-cnn-standard"),
])
def test_unknown_card_id_suggests_the_near_miss(kind, name, suggestion):
    with pytest.raises(CardError) as err:
        locate(kind, name)
    assert f"unknown {kind} {name!r}" in err.value.problem
    assert f"did you mean {suggestion!r}?" in err.value.fix


def test_unknown_card_id_without_a_near_miss(tmp_path):
    with pytest.raises(CardError) as err:
        load_model_card("zzzzzzzzzzzz")
    assert "did you mean" not in err.value.fix and "bench models" in err.value.fix
    with pytest.raises(CardError, match="does not exist"):
        load_model_card(tmp_path / "missing.yaml")


def test_include_must_name_one_file(tmp_path):
    card = tmp_path / "c.yaml"
    card.write_text("id: c\ninclude: [a.yaml, b.yaml]\nfamily: clean\n")
    with pytest.raises(CardError, match="include must be one file name"):
        read_card(card)


@pytest.mark.parametrize("norm", ["L2", "L1"])
def test_infinite_eps_is_refused(norm):
    with pytest.raises(CardError, match="finite"):
        make_threat(ThreatCard(id="inf", family="autoattack", params={"norm": norm, "eps": float("inf")}))


def test_protocol_hash_of_bad_params_is_a_card_error():
    with pytest.raises(CardError, match="eps"):
        ThreatCard(id="bad", family="pgd", params={"norm": "Linf", "eps": -1, "steps": 3}).hash
