"""The layout of src/segloss, enforced: entry points at the top only, dependencies pointing one way
(entry points → build → models/data/losses/metrics → utils/errors), no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "segloss"
ENTRY_POINTS = {"train", "eval", "predict", "export", "stats", "compare", "report", "rescore", "cityscapes_eval", "cli"}
SHARED = {"build", "checks", "errors", "__init__", "predict_volumes"}  # predict_volumes: make predict on NIfTI


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
    assert top == (ENTRY_POINTS - {"report"}) | SHARED  # report is a package
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == {"callbacks", "comparison", "data", "download", "losses", "metrics", "models", "report", "utils"}


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
    wrong = {
        (m, t)
        for m, ts in GRAPH.items()
        if layer(m) in ENTRY_POINTS
        for t in ts
        if layer(t) in ENTRY_POINTS and layer(t) != layer(m)
    }  # fmt: skip  (report's modules use each other)
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


def lightning_private_names(tmp: Path) -> set[str]:
    """The single-underscore names of the Lightning objects segloss works with: classes and instances."""
    import lightning.pytorch as L
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, WandbLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp)  # fmt: skip
    objects = [trainer, trainer.fit_loop, trainer.fit_loop.epoch_loop, L.LightningModule(), L.LightningDataModule(),
               Callback(), ModelCheckpoint(dirpath=tmp), CSVLogger(tmp), ExperimentWriter(str(tmp / "w")),
               WandbLogger]  # fmt: skip
    names = set()
    for obj in objects:
        names |= {n for n in {*dir(obj), *getattr(obj, "__dict__", {})} if n.startswith("_") and not n.startswith("__")}
    return names


def test_no_private_lightning_name_outside_the_adapter(tmp_path):
    """Lightning's private API is used in segloss/utils/lightning_adapter.py only (issue 25): an attribute,
    a getattr/hasattr string or an overridden method with a private name of Lightning's objects."""
    private = lightning_private_names(tmp_path)
    assert {"_trainer", "_logger_connector", "_save_last_checkpoint"} <= private  # the scan sees them
    found = []
    for path in SRC.rglob("*.py"):
        if path.name == "lightning_adapter.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Attribute):
                names.append(node.attr)
            elif isinstance(node, ast.FunctionDef):
                names.append(node.name)
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr", "setattr"):
                names += [a.value for a in node.args[1:2] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            found += [f"{path.relative_to(SRC)}:{node.lineno} {name}" for name in names if name in private]
    assert found == []


def test_no_test_module_imports_another():
    """Shared inputs live in tests/helpers/ (and conftest.py); a test module imports no other test module."""
    tests = SRC.parents[1] / "tests"
    found = []
    for path in tests.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            modules += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            found += [f"{path.name}: {m}" for m in modules if m.split(".")[-1].startswith("test_")]
    assert found == []
