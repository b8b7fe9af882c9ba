"""Every field of the run config is read somewhere in the product code: a field nothing reads is accepted
and ignored, which is worse than an unknown key (that one is refused). This is the floor; the tests of each
field's effect sit with the code that uses it (e.g. rollout.kv_cache_gib in
tests/integration/test_rollout_engines.py, the derived seeds in tests/unit/services/test_run_config.py)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

from services.config import RunConfig

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("rewards", "rollout", "learner", "services")


def _fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, field name) of every field in the tree, nested models included."""
    for name, info in model.model_fields.items():
        yield prefix + name, name
        for arg in (info.annotation, *getattr(info.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                yield from _fields(arg, f"{prefix}{name}.")


def _attributes_read() -> set[str]:
    """Names read as `x.name` anywhere in the product, outside the config modules that declare them."""
    names: set[str] = set()
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if path.name.endswith("config.py") and path.parent.name in PACKAGES:
                continue
            tree = ast.parse(path.read_text(), filename=str(path))
            names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                      and isinstance(n.ctx, ast.Load)}
    return names


def test_every_config_field_is_read_by_the_product() -> None:
    read = _attributes_read()
    unread = [dotted for dotted, name in _fields(RunConfig) if name not in read]
    assert not unread, (f"config fields that no product code reads: {unread}; use them or remove them "
                        "(a field that is accepted and ignored misleads whoever sets it)")
