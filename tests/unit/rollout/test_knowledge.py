"""Knowledge files: loading a folder, duplicate keys across files, unknown keys, malformed entries."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from rollout.knowledge import load_knowledge

NODULE = """\
version: 1
entries:
  chest_xray/nodule:
    modality: chest x-ray
    finding: nodule
    appearance: A small round opacity.
    location: the upper lung zones
"""
EFFUSION = """\
version: 1
entries:
  chest_xray/effusion:
    modality: chest x-ray
    finding: pleural effusion
    appearance: Blunting of the costophrenic angle.
    location: the lung bases
"""


def test_text_format_and_later_files_add_keys(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(NODULE)
    (tmp_path / "b.yml").write_text(EFFUSION)
    kb = load_knowledge(tmp_path)
    assert sorted(kb.entries) == ["chest_xray/effusion", "chest_xray/nodule"]
    assert kb.text("chest_xray/nodule") == "nodule on chest x-ray: A small round opacity. Typically the upper lung zones."  # noqa: E501
    assert kb.sources["chest_xray/effusion"].endswith("b.yml")
    # workers receive the knowledge base through Ray, so it must survive pickling
    assert pickle.loads(pickle.dumps(kb)).text("chest_xray/effusion") == kb.text("chest_xray/effusion")


def test_duplicate_key_names_both_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(NODULE)
    (tmp_path / "b.yaml").write_text(NODULE)
    with pytest.raises(ValueError, match=r"chest_xray/nodule.*a\.yaml.*b\.yaml"):
        load_knowledge(tmp_path)


def test_unknown_key_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(NODULE)
    with pytest.raises(KeyError, match=r"no prior knowledge for 'ct/mass'.*chest_xray/nodule"):
        load_knowledge(tmp_path).text("ct/mass")


@pytest.mark.parametrize("body, message", [
    ("version: 2\nentries: {}\n", "version: 1"),
    ("version: 1\nentries:\n  nodule:\n    modality: x\n", "must look like"),
    ("version: 1\nentries:\n  a/b:\n    modality: x\n    finding: y\n", "lacks non-empty text"),
    ("version: 1\nentries:\n  a/b: {modality: x, finding: y, appearance: z, location: w, size: 3}\n",
     "unknown fields"),
])
def test_malformed_files_are_rejected(tmp_path: Path, body: str, message: str) -> None:
    (tmp_path / "bad.yaml").write_text(body)
    with pytest.raises(ValueError, match=message):
        load_knowledge(tmp_path)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="deploy/knowledge"):
        load_knowledge(tmp_path / "absent")
