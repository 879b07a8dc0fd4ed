"""The import rules of the package map (README, Development): every import points down a floor.

The modules' imports are read with ``ast`` (function-level imports included, since a
lazy import is still a dependency), so a new upward import fails here before it grows
into a cycle. Floors, bottom to top:

0. the foundation: settings, keys, logs, fault hooks, the provider registry
1. ``sendonce.kafka`` and ``sendonce.schemas``
2. ``sendonce.connectors``
3. ``sendonce.streams`` (the worker)
4. ``sendonce.emulator`` (the Graph emulator: a test double, above what it imitates)
5. ``sendonce.ops`` (producers' and operators' tools)
6. ``sendonce.dev`` (local broker, torture harness, demo)
7. ``sendonce.cli`` and ``sendonce.bench`` (the top: nothing imports them)
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "sendonce"

#: Longest prefix wins. A module not listed here fails ``test_every_module_has_a_floor``.
FLOORS: dict[str, int] = {
    "sendonce": 0,
    "sendonce.settings": 0,
    "sendonce.keys": 0,
    "sendonce.logs": 0,
    "sendonce.faults": 0,
    "sendonce.providers": 0,
    "sendonce.kafka": 1,
    "sendonce.schemas": 1,
    "sendonce.connectors": 2,
    "sendonce.streams": 3,
    "sendonce.emulator": 4,
    "sendonce.ops": 5,
    "sendonce.dev": 6,
    "sendonce.cli": 7,
    "sendonce.bench": 7,
}

#: The product's folders, importable as top-level names only from a checkout's root.
TOP_LEVEL_FOLDERS = ("streams", "schemas", "connectors", "bench", "tests", "deploy")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (for ``from a import b``: ``a.b`` if that is a module)
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    # rglob does not follow links, and sendonce/streams etc. are links to the folders.
    found: dict[str, Path] = {}
    stack = [PACKAGE_DIR]
    while stack:
        folder = stack.pop()
        for entry in sorted(folder.iterdir()):
            if entry.is_dir() and (entry / "__init__.py").is_file():
                stack.append(entry)
            elif entry.suffix == ".py":
                found[_module_name(entry)] = entry
    return found


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    if node.level:
        package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
        base_parts = package.split(".")
        base_parts = base_parts[: len(base_parts) - (node.level - 1)]
        base = ".".join(base_parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    # `from sendonce.streams import metrics` depends on the module sendonce.streams.metrics.
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run (``if TYPE_CHECKING:`` blocks are left out: an
    annotation may name a type of a higher floor without depending on it at run time)."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))
    return found


def _imports(module: str) -> list[Import]:
    found: list[Import] = []
    for node in _runtime_imports(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, node.lineno) for alias in node.names]
        else:
            found += [Import(module, t, node.lineno) for t in _resolve(module, node)]
    return found


def floor_of(module: str) -> int | None:
    """The floor of a ``sendonce`` module (longest matching prefix), or None."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in FLOORS:
            return FLOORS[prefix]
    return None


ALL_IMPORTS = [imp for module in sorted(MODULES) for imp in _imports(module)]


def test_the_walk_sees_every_floor() -> None:
    # Guards the test itself: the links to the top-level folders are followed.
    seen = {floor_of(m) for m in MODULES}
    assert {"sendonce.streams.ledger", "sendonce.schemas.codec", "sendonce.cli.main"} <= set(
        MODULES
    )
    assert seen >= {0, 1, 2, 3, 5, 6, 7}


def test_every_module_has_a_floor() -> None:
    assert [m for m in MODULES if floor_of(m) is None] == []


def test_imports_point_down() -> None:
    upward = [
        f"{i.module}:{i.line} imports {i.target} "
        f"(floor {floor_of(i.target)} > {floor_of(i.module)})"
        for i in ALL_IMPORTS
        if i.target.startswith("sendonce") and (floor_of(i.target) or 0) > (floor_of(i.module) or 0)
    ]
    assert upward == []


@pytest.mark.parametrize("folder", TOP_LEVEL_FOLDERS)
def test_nothing_imports_a_top_level_folder(folder: str) -> None:
    # `import streams` works only from a checkout's root and gives a second copy of
    # every module: the wheel installs `sendonce` alone.
    wrong = [
        f"{i.module}:{i.line} imports {i.target}"
        for i in ALL_IMPORTS
        if i.target == folder or i.target.startswith(folder + ".")
    ]
    assert wrong == []


def test_product_code_never_edits_sys_path() -> None:
    edits = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            target = node.func if isinstance(node, ast.Call) else node
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Attribute)
                and target.value.attr == "path"
                and isinstance(target.value.value, ast.Name)
                and target.value.value.id == "sys"
                and target.attr in {"insert", "append", "extend", "remove"}
            ):
                edits.append(f"{module}:{node.lineno}")
            if isinstance(node, ast.Assign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                edits += [
                    f"{module}:{node.lineno}"
                    for t in targets
                    if isinstance(t, ast.Attribute)
                    and t.attr == "path"
                    and isinstance(t.value, ast.Name)
                    and t.value.id == "sys"
                ]
    assert edits == []


def test_the_rules_catch_an_upward_import() -> None:
    # The rule itself can fail: a worker module importing the CLI is reported.
    bad = Import("sendonce.streams.app", "sendonce.cli.main", 1)
    assert (floor_of(bad.target) or 0) > (floor_of(bad.module) or 0)
    assert floor_of("sendonce.streams.faults") == 3
    assert floor_of("sendonce.faults") == 0
    tree = ast.parse("if TYPE_CHECKING:\n    import a\nelse:\n    import b\nimport c\n")
    seen = [n.names[0].name for n in _runtime_imports(tree)]
    assert sorted(seen) == ["b", "c"]
