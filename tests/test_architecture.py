"""The package's shape: no import cycles between modules or between packages (lazy imports inside functions
included), a core that imports no method family and families that import no other family, one registry
implementation, a family index that says exactly what each family registers, families that break nothing
when they fail to import, and clear errors for broken optional dependencies."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import bench
from bench.errors import BenchError, DependencyError

PACKAGE = Path(bench.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str, known: set[str], types: bool = False) -> set[str]:
    """bench modules imported anywhere in the file (top level or inside functions), resolved to the most specific
    module that exists; those under ``if TYPE_CHECKING:`` only with ``types``."""
    tree = ast.parse(path.read_text())
    skipped = set() if types else {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                                   and getattr(node.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(node)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph(types: bool = False) -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    return {module: _imports(path, module, known, types) for module, path in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def package_of(module: str) -> str:
    """A module's package for the package-level graph: ``bench.X`` for a core package or top-level module,
    ``bench.families.Y`` for a method family."""
    parts = module.split(".")
    return ".".join(parts[:3] if parts[1:2] == ["families"] and len(parts) > 2 else parts[:2])


def package_graph() -> dict[str, set[str]]:
    """Dependencies between packages, type-only imports included: an annotation couples two packages too (within
    a package, ``TYPE_CHECKING`` is the usual way to name a type of a module that imports this one)."""
    graph: dict[str, set[str]] = {}
    for module, imported in import_graph(types=True).items():
        own = package_of(module)
        graph.setdefault(own, set()).update(package_of(m) for m in imported if package_of(m) != own)
    return graph


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 40 and "bench.run" in graph["bench.cli"] | {"bench.run"}
    assert _cycles(graph) == []


def test_there_are_no_cycles_between_packages():
    graph = package_graph()
    assert {"bench.models", "bench.tasks", "bench.training", "bench.store", "bench.families.ood_to_id"} <= set(graph)
    assert _cycles(graph) == []


def test_the_package_graph_sees_what_the_module_graph_hides():
    """models.a -> tasks.b -> models.c is no module cycle, but it is a cycle between the two packages."""
    modules = {"bench.models.a": {"bench.tasks.b"}, "bench.tasks.b": {"bench.models.c"}, "bench.models.c": set()}
    assert _cycles(modules) == []
    packages: dict[str, set[str]] = {}
    for module, imported in modules.items():
        packages.setdefault(package_of(module), set()).update(package_of(m) for m in imported)
    assert _cycles({p: d - {p} for p, d in packages.items()}) == [["bench.models", "bench.tasks"]]


def test_a_family_imports_no_other_family():
    graph = package_graph()
    families = [p for p in graph if p.startswith("bench.families.")]
    assert len(families) >= 4
    assert {f: sorted(d for d in graph[f] if d.startswith("bench.families.")) for f in families
            if any(d.startswith("bench.families.") for d in graph[f])} == {}


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_core_imports_no_method_family():
    graph = import_graph()
    core = [m for m in graph if not m.startswith("bench.families")]
    offenders = {m: sorted(d for d in graph[m] if d.startswith("bench.families")) for m in core}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_every_registry_is_one_implementation():
    from bench.data import DATASETS
    from bench.families.corruptions.library import CORRUPTIONS
    from bench.families.learned_sets.pairs import PAIR_SOURCES
    from bench.models.archs import ARCHITECTURES
    from bench.ops.losses import LOSSES
    from bench.registry import Registry
    from bench.tasks import TASKS
    from bench.threats import THREAT_FAMILIES
    from bench.recipes.base import RECIPES

    registries = [DATASETS, PAIR_SOURCES, CORRUPTIONS, ARCHITECTURES, LOSSES, TASKS, THREAT_FAMILIES, RECIPES]
    assert all(type(r) is Registry for r in registries)
    for registry in registries:
        first = registry.names()[0]
        with pytest.raises(BenchError) as err:
            registry.get(first + "x")
        assert f"did you mean {first!r}?" in err.value.fix


def test_a_duplicate_registration_is_an_error():
    from bench.registry import Registry

    registry = Registry("thing")
    registry.register("a", 1)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a", 2)


@pytest.mark.parametrize("failure", [ImportError("No module named 'torchvision'"),
                                     RuntimeError("operator torchvision::nms does not exist")])
def test_a_missing_or_broken_optional_dependency_is_a_clear_error(monkeypatch, tmp_path, failure):
    import importlib

    real = importlib.import_module

    def broken(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise failure
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", broken)
    from bench.data.cifar10 import load_cifar10

    with pytest.raises(DependencyError) as err:
        load_cifar10("test", tmp_path)
    assert "CIFAR-10 needs the package torchvision" in err.value.problem
    assert "pip install 'bench[vision]'" in err.value.fix
