"""The family index: it says exactly what each family registers, a look-up imports only the family that holds
the name, and a family that fails to import (a missing optional package, a bug) is listed as broken with its
error while every other family and command goes on working. Each case runs in a fresh interpreter, so what
the other tests imported does not hide what a user's first command would do."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from bench.registry import families

CORE_REGISTRIES = """
from bench.data import DATASETS, MAKERS
from bench.models.archs import ARCHITECTURES
from bench.models.compose import COMPOSERS
from bench.ops.losses import LOSSES
from bench.recipes import RECIPES
from bench.tasks import TASKS
from bench.threats import THREAT_FAMILIES
REGISTRIES = [DATASETS, MAKERS, ARCHITECTURES, COMPOSERS, LOSSES, RECIPES, TASKS, THREAT_FAMILIES]
"""


def python(code: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_the_index_lists_exactly_what_each_family_registers():
    out = python(CORE_REGISTRIES + """
        import importlib, json
        from bench.registry import families
        for r in REGISTRIES:
            r._load_core()
        seen = {r.what: set(r._entries) for r in REGISTRIES}
        found = {}
        for family in families():
            importlib.import_module(family.package).register()
            found[family.package] = {r.what: sorted(set(r._entries) - seen[r.what]) for r in REGISTRIES
                                     if set(r._entries) - seen[r.what]}
            seen = {r.what: set(r._entries) for r in REGISTRIES}
        print(json.dumps(found))
    """.replace("\n        ", "\n"))
    assert out.returncode == 0, out.stderr
    registered = json.loads(out.stdout)
    declared = {f.package: {what: sorted(names) for what, names in f.provides.items()} for f in families()}
    assert registered == declared, "bench/families/__init__.py must list what each family registers"


def test_a_look_up_imports_only_the_family_that_holds_the_name():
    out = python("""
        import sys
        from bench.threats import THREAT_FAMILIES
        def loaded():
            return sorted({m.split(".")[2] for m in sys.modules if m.startswith("bench.families.")})
        THREAT_FAMILIES.get("pgd")
        first = loaded()
        THREAT_FAMILIES.get("vae-margin")
        print(first, loaded(), "corruptions" in THREAT_FAMILIES, loaded())
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "[] ['vae_robustness'] True ['vae_robustness']"


BROKEN = """
    import sys
    sys.path.insert(0, sys.argv.pop(1))
    sys.modules["bench.families.corruptions.library"] = None  # importing the corruptions family now fails
    import bench.families
    from bench.registry import Family
    bench.families.FAMILIES += (Family("broken_plugin", provides={"threat family": ("broken-attack",)},
                                       command="broken"),)
    from typer.testing import CliRunner
    from bench.cli import app
    result = CliRunner().invoke(app, sys.argv[1:])
    print(result.output)
    sys.exit(result.exit_code)
"""


@pytest.fixture(scope="module")
def broken(tmp_path_factory, digits_card):
    """A CLI in which the corruptions family cannot import and a plugin family needs a missing package."""
    folder = tmp_path_factory.mktemp("broken-family")
    (folder / "broken_plugin.py").write_text('raise ImportError("No module named \'kornia\'")\n')
    pgd = folder / "pgd.yaml"
    pgd.write_text(yaml.safe_dump({"id": "pgd-small", "family": "pgd",
                                   "params": {"norm": "Linf", "eps": 0.1, "steps": 2}}))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return python(BROKEN, str(folder), *args, "--results", str(folder / "results")) \
            if args[0] in ("run",) else python(BROKEN, str(folder), *args)

    return cli, str(digits_card), str(pgd)


def test_a_broken_family_is_listed_with_its_error_and_the_others_list(broken):
    cli, _, _ = broken
    threats = cli("threats", "--format", "csv")
    assert threats.returncode == 0, threats.stdout + threats.stderr
    assert "pgd-linf-0.3,pgd" in threats.stdout
    assert "corruptions-mnist" in threats.stdout and "method family corruptions, which cannot be imported" \
        in threats.stdout
    assert "warning: the method family corruptions cannot be imported (ModuleNotFoundError" in threats.stdout
    assert "warning: the method family broken_plugin cannot be imported (ImportError: No module named 'kornia')" \
        in threats.stdout
    models = cli("models", "--format", "csv")
    assert models.returncode == 0 and "mnist-cnn-pgd-at" in models.stdout and "mnist-vae" in models.stdout


def test_every_other_family_runs_and_the_broken_one_says_why(broken):
    cli, model, pgd = broken
    ok = cli("run", "--model", model, "--threat", pgd, "--n", "20", "--device", "cpu")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "robust accuracy" in ok.stdout
    refused = cli("run", "--model", "mnist-cnn-standard", "--threat", "corruptions-mnist", "--n", "20")
    assert refused.returncode == 2 and "Traceback" not in refused.stdout + refused.stderr
    assert "corruptions" in refused.stdout and "cannot be imported" in refused.stdout
    plugin = cli("broken", "anything")
    assert plugin.returncode == 2 and "the method family broken_plugin cannot be imported" in plugin.stdout
    assert "kornia" in plugin.stdout
    make = cli("data", "make", "mnist-c")
    assert make.returncode == 2 and "corruptions, which cannot be imported" in make.stdout


def test_the_board_still_shows_a_broken_familys_runs(broken, tmp_path):
    import bench

    cli, model, pgd = broken
    ood = tmp_path / "ood.yaml"
    ood.write_text(yaml.safe_dump({"id": "ood-small", "family": "ood",
                                   "params": {"shifts": ["darker"], "strengths": {"darker": [0.5]}}}))
    for threat in (str(ood), pgd):
        bench.evaluate(model, threat, n=20, device="cpu", results=tmp_path / "results", progress=False)
    board = cli("board", "--results", str(tmp_path / "results"))
    assert board.returncode == 0, board.stdout + board.stderr
    assert "ood-small" in board.stdout and "code unknown here (family ood does not load)" in board.stdout
    assert "pgd-small" in board.stdout
