"""The pretrained-base recipe: a stable cache key, clear errors, the base's own reasoning text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rollout.knowledge import load_knowledge
from services.config import ConfigError
from services.data.records import Record, RecordMeta
from services.models.pretrain import RECIPE_FILE, BaseRecipe, is_built, load_recipe
from services.targets import SFT_THINK, own_think, recites, sft_think

ROOT = Path(__file__).resolve().parents[3]
RECIPES = sorted((ROOT / "deploy" / "configs" / "bases").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_validate(path: Path) -> None:
    assert load_recipe(path).digest() == load_recipe(path).digest()


def test_the_digest_keys_every_field(tmp_path: Path) -> None:
    base = BaseRecipe()
    assert len({base.digest(), base.model_copy(update={"steps": 1999}).digest(),
                base.model_copy(update={"data_knobs": {"noise_std": 0.05}}).digest()}) == 3
    (tmp_path / RECIPE_FILE).write_text(json.dumps({"digest": base.digest()}))
    assert is_built(base, tmp_path) and not is_built(base.model_copy(update={"lr": 1e-3}), tmp_path)
    assert not is_built(base, tmp_path / "missing")


def test_recipe_errors_name_the_field_and_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 10\n")
    with pytest.raises(ConfigError, match=r"stepz: unknown key; did you mean 'steps'"):
        load_recipe(bad)


def test_own_think_says_where_and_sometimes_recites_the_knowledge() -> None:
    knowledge = load_knowledge(ROOT / "deploy" / "knowledge")
    meta = RecordMeta(attributes={"finding": "mass", "side": "left", "zone": "upper"})
    record = Record(id="r", image="x.png", width=100, height=100, phrase="small left mass",
                    boxes=((1.0, 1.0, 9.0, 9.0),), knowledge_key="cxr/mass", meta=meta)
    assert own_think(record, knowledge, recite=False) == "left lung, upper zone."
    recited = own_think(record, knowledge, recite=True)
    opening = " ".join(knowledge.entries["cxr/mass"].appearance.split()[:8]).rstrip(",;.")
    assert recited == f"{opening}. left lung, upper zone."
    plain = record.model_copy(update={"meta": RecordMeta(), "knowledge_key": None})
    assert own_think(plain, knowledge, recite=True) == "small left mass."


def test_sft_targets_on_a_base_keep_its_own_reasoning_and_recite_for_a_fixed_share_of_records() -> None:
    knowledge = load_knowledge(ROOT / "deploy" / "knowledge")
    meta = RecordMeta(attributes={"finding": "mass", "side": "left", "zone": "upper"})
    records = [Record(id=f"r{i}", image="x.png", width=100, height=100, phrase="small left mass",
                      boxes=((1.0, 1.0, 9.0, 9.0),), knowledge_key="cxr/mass", meta=meta)
               for i in range(2000)]
    # Without a base recipe: the fixed warm-start think.
    assert sft_think(records[0], knowledge, None, seed=0) == SFT_THINK
    thinks = [sft_think(r, knowledge, 0.3, seed=0) for r in records]
    assert set(thinks) == {own_think(records[0], knowledge, recite=False),
                           own_think(records[0], knowledge, recite=True)}
    share = sum(t != "left lung, upper zone." for t in thinks) / len(thinks)
    assert 0.27 < share < 0.33  # the recipe's recite_fraction, drawn per record
    # The same record gets the same target on every call (a resumed run trains on the same answers) ...
    assert [sft_think(r, knowledge, 0.3, seed=0) for r in records] == thinks
    # ... and another run seed draws other records.
    assert [sft_think(r, knowledge, 0.3, seed=1) for r in records] != thinks
    assert [recites(r.id, 0.0, 0) for r in records[:50]] == [False] * 50
    # A grading record's think says where it looks too; a normal image's (no side, no zone) looks at both.
    graded = records[0].model_copy(update={"task": "grading", "grade": 2, "boxes": (),
                                           "knowledge_key": "cxr/chest-radiograph"})
    assert own_think(graded, knowledge, recite=False) == "left lung, upper zone."
    normal = graded.model_copy(update={"grade": 0, "meta": RecordMeta()})
    assert own_think(normal, knowledge, recite=False) == "both lung fields."
    assert own_think(normal, knowledge, recite=True).endswith(". both lung fields.")
