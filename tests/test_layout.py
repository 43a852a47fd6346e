"""The layout of src/segloss, enforced: entry points at the top only, dependencies pointing one way
(entry points → build → models/data/losses/metrics → utils/errors), no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "segloss"
ENTRY_POINTS = {"train", "eval", "predict", "stats", "compare", "rescore", "cityscapes_eval", "cli"}
SHARED = {"build", "checks", "errors", "callbacks", "__init__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The segloss modules a file imports (at module level or inside functions)."""
    modules = {module_name(p) for p in SRC.rglob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("segloss"):
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules
            found |= submodules or {node.module}  # `from pkg import mod` needs mod; `from mod import x`, mod
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("segloss")}
    return found & modules


GRAPH = {module_name(p): imports_of(p) for p in SRC.rglob("*.py")}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "segloss"


def test_the_top_holds_entry_points_and_a_few_shared_modules():
    top = {p.stem for p in SRC.glob("*.py")}
    assert top == ENTRY_POINTS | SHARED
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == {"comparison", "data", "download", "losses", "metrics", "models", "utils"}


@pytest.mark.parametrize(
    "package,forbidden",
    [("models", {"data", "train", "eval", "predict", "stats", "compare", "build", "callbacks", "checks"}),
     ("data", {"models", "losses", "metrics", "train", "eval", "predict", "stats", "compare", "build", "callbacks"}),
     ("losses", {"data", "models", "metrics", "utils", "build", "callbacks", "checks", "comparison", *ENTRY_POINTS}),
     ("metrics", {"data", "models", "losses", "build", "callbacks", "checks", *ENTRY_POINTS}),
     ("utils", {"data", "models", "losses", "metrics", "build", "callbacks", "checks", "comparison", *ENTRY_POINTS}),
     ("comparison", {"data", "models", "losses", "metrics", "build", "callbacks", *ENTRY_POINTS}),
     ("download", {"data", "models", "losses", "metrics", "comparison", "build", "callbacks", "checks",
                   *ENTRY_POINTS})],
)  # fmt: skip
def test_dependencies_point_one_way(package, forbidden):
    wrong = {
        (module, target)
        for module, targets in GRAPH.items()
        if layer(module) == package
        for target in targets
        if layer(target) in forbidden
    }
    assert wrong == set()


def test_no_entry_point_imports_another():
    wrong = {(m, t) for m, ts in GRAPH.items() if layer(m) in ENTRY_POINTS for t in ts if layer(t) in ENTRY_POINTS}
    assert wrong == set()  # eval and predict build their module through segloss.build, not segloss.train


def test_no_import_cycles():
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for target in GRAPH.get(todo.pop(), ()):
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return seen

    cycles = sorted(m for m in GRAPH if m in reach(m) and not m.endswith("__init__") and "." in m)
    packages = {m for m in GRAPH if (SRC.parent / m.replace(".", "/") / "__init__.py").exists()}
    assert [m for m in cycles if m not in packages] == []
