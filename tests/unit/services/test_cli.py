"""The CLI has the commands of docs/architecture.md ("Entry points"); bad input gets the fix, exit 1."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from services.cli import app

runner = CliRunner()
COMMANDS = {"train", "demo", "eval", "serve", "scale", "status", "data", "init-model",
            "validate-config", "submit",
            "export", "pretrain-base"}


def test_the_registered_commands_are_the_documented_ones() -> None:
    registered = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert set(registered) == COMMANDS
    assert runner.invoke(app, ["--help"]).exit_code == 0


def test_validate_config_reports_the_fix(tmp_path: Path) -> None:
    demo = Path(__file__).resolve().parents[3] / "deploy" / "configs" / "demo.yaml"
    ok = runner.invoke(app, ["validate-config", str(demo)])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(app, ["validate-config", str(demo), "--set", "rollout.grup_size=4"])
    assert bad.exit_code == 1
    assert "did you mean 'group_size'" in bad.output


def test_init_model_requires_tiny(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init-model", str(tmp_path / "m")])
    assert result.exit_code == 1
    assert "--tiny" in result.output
