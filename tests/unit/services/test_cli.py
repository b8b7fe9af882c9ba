"""The CLI lists the commands of ARCHITECTURE.md; commands not built yet say so and exit non-zero."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from services.cli import app

runner = CliRunner()
COMMANDS = ["train", "eval", "serve", "scale", "status", "data", "init-model", "validate-config", "submit",
            "export"]


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output, command


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
