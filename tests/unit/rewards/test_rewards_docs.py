"""The runnable examples in the rewards docstrings stay true (TRL-style: reward functions with examples)."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["rewards", "rewards.boxes", "rewards.scoring", "rewards.frames",
                                    "rewards.parse",
                                    "rewards.schedule"])
def test_docstring_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
