"""Listings and errors a new user types first answer without torch: `bench models`, `bench run` with an unknown
model, and `bench threats` once its family-derived fields are kept (refreshed when a card, even one named by
path from outside the catalogue, changes). JSON listings give structured fields; registries that declare their
names answer membership without importing anything. Each process case runs in a fresh interpreter, so what
other tests imported does not hide what a user's command imports."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml
from typer.testing import CliRunner

from bench.cli import app

CLI = """
    import json, sys
    from typer.testing import CliRunner
    from bench.cli import app
    result = CliRunner().invoke(app, sys.argv[1:])
    print(json.dumps({"code": result.exit_code, "output": result.output, "torch": "torch" in sys.modules,
                      "families": sorted(m for m in sys.modules if m.startswith("bench.families."))}))
"""


def bench_cli(*args: str, env: dict[str, str]) -> dict:
    """`bench ARGS` in a fresh interpreter: its exit code, output, and whether torch or any family got imported."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(CLI), *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture
def fresh_cache(tmp_path):
    return {"BENCH_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}


def test_model_listings_and_an_unknown_model_do_not_import_torch(fresh_cache):
    for args in (["models"], ["models", "--format", "csv"], ["models", "--task", "perturbation-set"]):
        done = bench_cli(*args, env=fresh_cache)
        assert done["code"] == 0 and ("mnist-cnn-pgd-at" in done["output"]) != ("perturbation-set" in args), done
        assert not done["torch"] and not done["families"], (args, done["families"])
    done = bench_cli("run", "--model", "mnist-cnn-standrd", "--threat", "pgd", env=fresh_cache)
    assert done["code"] == 2 and "unknown model 'mnist-cnn-standrd'" in done["output"]
    assert "did you mean 'mnist-cnn-standard'" in done["output"]
    assert not done["torch"] and not done["families"]


def test_a_card_is_read_and_validated_without_torch():
    out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        from bench.models.card import load_model_card
        from bench.tasks import TASKS
        card = load_model_card("mnist42-cnn-cvae-adv")  # a family's card (learned-sets), checked by name only
        assert "classifier" in TASKS and "perturbation-set" in TASKS and "nosuch" not in TASKS
        print(card.id, "torch" in sys.modules, sorted(m for m in sys.modules if m.startswith("bench.tasks.")))
        TASKS.get("generative")  # a look-up imports only the module that declares the name
        print(sorted(m for m in sys.modules if m.startswith("bench.tasks.")))
    """)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["mnist42-cnn-cvae-adv False []", "['bench.tasks.generative']"]


DECLARED = """
    import importlib, json, sys
    from bench.data import DATASETS, MAKERS
    from bench.models.archs import ARCHITECTURES
    from bench.models.compose import COMPOSERS
    from bench.ops.losses import LOSSES
    from bench.recipes import RECIPES
    from bench.tasks import TASKS
    from bench.threats import THREAT_FAMILIES
    registries = [DATASETS, MAKERS, ARCHITECTURES, COMPOSERS, LOSSES, RECIPES, TASKS, THREAT_FAMILIES]
    if len(sys.argv) == 1:
        print(json.dumps([[r.what, m] for r in registries for m in r._declared or ()]))
    else:
        registry = next(r for r in registries if r.what == sys.argv[1])
        before = set(registry._entries)
        importlib.import_module(sys.argv[2])
        print(json.dumps([sorted(set(registry._entries) - before), sorted(registry._declared[sys.argv[2]])]))
"""


def test_registries_declaring_their_names_declare_exactly_what_their_modules_register():
    def python(*args: str) -> list:
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(DECLARED), *args], capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[-1])

    declaring = python()
    assert ["task", "bench.tasks.classifier"] in declaring
    for what, module in declaring:  # each module in a fresh interpreter: what it alone registers
        registered, declared = python(what, module)
        assert registered == declared, f"the {what} registry must declare what {module} registers"


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    """A user card folder with an ensemble whose member is a card outside every card folder, listed once (the
    listing is computed and kept), then again (read back)."""
    root = tmp_path_factory.mktemp("kept")
    outside = root / "elsewhere" / "member.yaml"
    outside.parent.mkdir()
    outside.write_text(yaml.safe_dump({"id": "member", "family": "pgd", "params": {"norm": "Linf", "eps": 0.1,
                                                                                  "steps": 2}}))
    (root / "cards" / "attacks").mkdir(parents=True)
    (root / "cards" / "attacks" / "user-ensemble.yaml").write_text(yaml.safe_dump(
        {"id": "user-ensemble", "family": "ensemble", "params": {"members": [str(outside), "pgd-linf-0.3"]}}))
    env = {"BENCH_CACHE": str(root / "cache"), "BENCH_CARDS": str(root / "cards"), "COLUMNS": "200"}
    first = bench_cli("threats", "--format", "json", env=env)
    second = bench_cli("threats", "--format", "json", env=env)
    table = bench_cli("threats", env=env)
    return env, outside, first, second, table


def _protocol(listing: dict, card_id: str) -> str:
    return next(r["protocol"] for r in json.loads(listing["output"]) if r["id"] == card_id)


def test_the_threat_listing_is_kept_and_read_back_without_torch(kept):
    env, _, first, second, table = kept
    assert first["code"] == 0 and first["torch"]  # computing it needs every family's code
    assert second["code"] == 0 and not second["torch"] and not second["families"]
    assert second["output"] == first["output"]
    assert table["code"] == 0 and not table["torch"]
    assert "families (`bench run --threat FAMILY` runs its default card): " in table["output"]
    assert any(line.split()[:2] == ["user-ensemble", "ensemble"] for line in table["output"].splitlines())


def test_a_kept_listing_is_recomputed_when_a_card_it_read_changes(kept):
    env, outside, first, _, _ = kept
    before = _protocol(first, "user-ensemble")
    outside.write_text(yaml.safe_dump({"id": "member", "family": "pgd", "params": {"norm": "Linf", "eps": 0.2,
                                                                                   "steps": 2}}))
    again = bench_cli("threats", "--format", "json", env=env)
    assert again["torch"]  # recomputed, not read back
    after = _protocol(again, "user-ensemble")
    assert after != before
    from bench.threats import load_threat_card

    assert after == load_threat_card(os.path.join(env["BENCH_CARDS"], "attacks", "user-ensemble.yaml")).hash


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_the_json_threat_listing_has_structured_fields(cli):
    done = cli("threats", "--format", "json")
    assert done.exit_code == 0, done.output
    records = {r["id"]: r for r in json.loads(done.stdout)}
    pgd = records["pgd-linf-0.3"]
    assert set(pgd) == {"id", "family", "default", "tasks", "datasets", "params", "ball", "protocol", "description",
                        "path", "error"}
    assert pgd["family"] == "pgd" and isinstance(pgd["default"], bool) and pgd["error"] is None
    assert pgd["tasks"] == ["classifier"] and isinstance(pgd["datasets"], list)
    assert isinstance(pgd["params"], dict) and pgd["params"]["norm"] == "Linf"
    assert len(pgd["protocol"]) == 64
    from bench.threats import load_threat_card

    assert pgd["protocol"] == load_threat_card("pgd-linf-0.3").hash
    assert any(r["default"] for r in records.values())


def test_the_json_model_listing_has_structured_fields(cli):
    done = cli("models", "--format", "json")
    assert done.exit_code == 0, done.output
    records = {r["id"]: r for r in json.loads(done.stdout)}
    card = records["mnist-cnn-pgd-at"]
    assert set(card) == {"id", "task", "dataset", "architecture", "compose", "weights", "entry_point", "recipe",
                         "trained_on_first_use", "prebuilt", "hash", "paper", "license", "description", "path",
                         "error"}
    from bench.models.card import load_model_card

    assert card["hash"] == load_model_card("mnist-cnn-pgd-at").hash and card["error"] is None
    assert card["task"] == "classifier" and card["dataset"] == "mnist" and isinstance(card["architecture"], str)
    assert isinstance(card["trained_on_first_use"], bool)
    shipped, trains = records["mnist42-cnn-cvae-adv"], records["mnist42-cnn-cvae-smoothing"]
    assert shipped["prebuilt"] and not shipped["trained_on_first_use"]
    assert trains["trained_on_first_use"] and not trains["prebuilt"]
    assert card["trained_on_first_use"] == (card["weights"] is None)
    composed = [r for r in records.values() if r["compose"] is not None]
    assert composed and all(isinstance(r["compose"]["parts"], dict) for r in composed)
    # the table keeps its columns
    table = cli("models", "--format", "csv").stdout.splitlines()
    assert table[0] == "id,task,dataset,architecture,weights,description"
