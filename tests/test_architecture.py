"""The package's layer map (``diffhmc/__init__.py``) is the truth about imports.

Every import in ``src/diffhmc`` (module level or inside a function) is parsed; a module of
subpackage A may import subpackage B only when B is A itself or sits on a lower layer.
Module-level imports between modules must form no cycle. Every subpackage is named in the
package docstring and has a docstring of its own saying what it owns and may import.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import diffhmc

SRC = Path(diffhmc.__file__).parent

# lowest first; subpackages on one layer may not import each other
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),
    ("simulation", "stats", "evaluation", "batch"),
    ("data",),
    ("emulator", "baselines"),
    ("inference",),
    ("plots",),
    ("workflows",),
    ("cli",),
)
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        rel = p.relative_to(SRC).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["diffhmc", *parts])] = p
    return out


def _imports(path: Path, module_level_only: bool = False) -> list[tuple[str, int]]:
    """(imported diffhmc module or name, line) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("diffhmc")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "diffhmc":
                found += [(f"diffhmc.{a.name}", node.lineno) for a in node.names]
            elif node.module.startswith("diffhmc."):
                found.append((node.module, node.lineno))
    return found


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def layer_violations() -> list[str]:
    """Every import that points from a lower layer to a higher one (or sideways)."""
    bad = []
    for mod, path in _modules().items():
        own = _subpackage(mod)
        for target, line in _imports(path):
            dep = _subpackage(target)
            if own is None or dep is None or dep == own:
                continue
            if RANK[dep] >= RANK[own]:
                bad.append(f"{path.relative_to(SRC)}:{line} ({own}) imports {target} ({dep})")
    return bad


def test_every_module_belongs_to_a_layer() -> None:
    stray = [
        m for m in _modules() if m not in ("diffhmc", "diffhmc.__main__") and _subpackage(m) is None
    ]
    assert stray == [], f"modules outside the layer map: {stray}"


def test_imports_point_downwards_only() -> None:
    assert layer_violations() == []


def test_no_import_cycles() -> None:
    mods = _modules()
    graph = {
        m: {t for t, _ in _imports(p, module_level_only=True) if t in mods and t != m}
        for m, p in mods.items()
    }
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                pytest.fail(f"import cycle: {' -> '.join([*stack, m, n])}")
            if n not in state:
                visit(n, [*stack, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_layer_rule_catches_an_upward_import(tmp_path: Path, monkeypatch) -> None:
    """The check itself can fail: a core module importing the CLI is reported."""
    fake = tmp_path / "diffhmc"
    for sub in ("core", "cli"):
        (fake / sub).mkdir(parents=True)
        (fake / sub / "__init__.py").write_text('"""x."""\n')
    (fake / "__init__.py").write_text('"""x."""\n')
    (fake / "core" / "bad.py").write_text("def f():\n    from diffhmc.cli.main import main\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    assert layer_violations() == ["core/bad.py:2 (core) imports diffhmc.cli.main (cli)"]


def test_layer_map_documents_every_subpackage() -> None:
    doc = diffhmc.__doc__ or ""
    subs = sorted(p.parent.name for p in SRC.glob("*/__init__.py"))
    assert sorted(RANK) == subs, "LAYERS here and the subpackages on disk differ"
    for sub in subs:
        assert f"{sub}/" in doc, f"package docstring's layer map misses {sub}/"
        mod = importlib.import_module(f"diffhmc.{sub}")
        assert mod.__doc__ and "Imports:" in mod.__doc__, f"{sub} docstring lacks 'Imports:'"


def _declared(doc: str) -> set[str] | None:
    """Subpackages a docstring's ``Imports:`` paragraph names (None: "every ...")."""
    para = doc.split("Imports:", 1)[1].split("\n\n", 1)[0]
    if "every" in para:
        return None
    return set(re.findall(r"diffhmc\.(\w+)", para))


def test_docstrings_say_what_each_subpackage_imports() -> None:
    """What a subpackage's docstring says it may import covers what it does import."""
    actual: dict[str, set[str]] = {sub: set() for sub in RANK}
    for mod, path in _modules().items():
        own = _subpackage(mod)
        for target, _ in _imports(path):
            dep = _subpackage(target)
            if own and dep and dep != own:
                actual[own].add(dep)
    for sub in RANK:
        declared = _declared(importlib.import_module(f"diffhmc.{sub}").__doc__ or "")
        if declared is not None:
            assert actual[sub] <= declared, f"{sub} imports {sorted(actual[sub] - declared)}"


def test_every_module_imports() -> None:
    for info in pkgutil.walk_packages(diffhmc.__path__, "diffhmc."):
        importlib.import_module(info.name)
