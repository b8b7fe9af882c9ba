"""Which adapter the Serve app picks: the newest COMPLETE checkpoint with an adapter; broken dirs are errors
that name the missing file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.serve.adapters import AdapterError, latest_adapter, read_adapter


def _adapter(path: Path, version: int) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    (path / "adapter_model.safetensors").write_bytes(b"")
    (path / "medground_adapter.json").write_text(json.dumps({"version": version}))
    return path


def _checkpoint(run: Path, step: int, version: int, complete: bool = True) -> None:
    _adapter(run / "checkpoints" / f"step-{step}" / "adapter", version)
    if complete:
        (run / "checkpoints" / f"step-{step}" / "COMPLETE").write_text(f"{step}\n")


def test_latest_complete_checkpoint_wins(tmp_path: Path) -> None:
    assert latest_adapter(tmp_path) is None
    _checkpoint(tmp_path, 2, 1)
    _checkpoint(tmp_path, 10, 5)
    _checkpoint(tmp_path, 12, 6, complete=False)  # still being written: ignored
    found = latest_adapter(tmp_path)
    assert found is not None and (found.version, found.step) == (5, 10)
    assert found.path == str((tmp_path / "checkpoints" / "step-10" / "adapter").resolve())
    assert found.spec().version == 5


def test_read_adapter_steps_into_a_checkpoint_dir(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 3, 2)
    assert read_adapter(tmp_path / "checkpoints" / "step-3").version == 2


@pytest.mark.parametrize(("broken", "message"), [
    ("adapter_model.safetensors", "adapter_model.safetensors is missing"),
    ("medground_adapter.json", "medground_adapter.json is missing")])
def test_broken_adapter_dirs_name_the_missing_file(tmp_path: Path, broken: str, message: str) -> None:
    (_adapter(tmp_path / "a", 3) / broken).unlink()
    with pytest.raises(AdapterError, match=message):
        read_adapter(tmp_path / "a")


def test_version_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="version must be >= 1"):
        read_adapter(_adapter(tmp_path / "a", 0))
