"""`segloss COMMAND …`, `segloss --version` and the console scripts' targets (segloss.cli)."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from segloss import cli

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def test_every_console_script_and_command_points_at_a_function():
    scripts = PYPROJECT["project"]["scripts"]
    assert set(scripts) == {"segloss", *(f"segloss-{name}" for name in cli.COMMANDS)}
    for name, spec in scripts.items():
        assert callable(cli._target(spec)), name
    for name, (spec, _) in cli.COMMANDS.items():
        assert spec == scripts[f"segloss-{name}"], name  # `segloss NAME` runs what `segloss-NAME` runs


def test_version_help_and_an_unknown_command(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"segloss {cli.__version__}"
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in cli.COMMANDS)
    assert cli.main(["tarin"]) == 2
    assert "segloss: error: unknown command 'tarin'; choose one of train, eval" in capsys.readouterr().err


def test_a_command_gets_its_arguments_as_its_own_script_would(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "_target", lambda spec: lambda: seen.append((spec, list(sys.argv))) or 0)
    monkeypatch.setattr(sys, "argv", ["segloss"])
    assert cli.main(["rescore", "logs/x", "--dry-run"]) == 0
    assert seen == [("segloss.rescore:main", ["segloss-rescore", "logs/x", "--dry-run"])]


@pytest.mark.parametrize("given,expected", [
    ([], ["segloss-search", "hparams_search=focal_optuna"]),
    (["hparams_search=tversky_optuna", "seed=1"], ["segloss-search", "hparams_search=tversky_optuna", "seed=1"]),
])  # fmt: skip
def test_search_picks_the_default_search_unless_one_is_named(monkeypatch, given, expected):
    seen = []
    monkeypatch.setattr(cli, "_target", lambda spec: lambda: seen.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["segloss-search", *given])
    cli.search()
    assert seen == [expected]
