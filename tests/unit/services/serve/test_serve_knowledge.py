"""One prompt for training, evaluation and the endpoint: a free-text request to a run that injected knowledge
gets the key its phrase names (services/serve/trained_on.py), so the served prompt is evaluation's.

Before: a request without `knowledge_key` was prompted without knowledge, and the demo model answered
[17, 39, 66, 75] served where evaluation answered [13, 29, 65, 80] for the same image and phrase.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout.contracts import RolloutRequest
from rollout.knowledge import load_knowledge, match_key
from rollout.prompts import build_prompt
from services.config import load_config
from services.convert import rollout_request
from services.data.manifest import load_manifest
from services.serve.core import GroundRequest, serve_request
from services.serve.trained_on import TrainedOn, choose_knowledge, trained_on
from services.serve.validate import DecodedImage

KB = load_knowledge("deploy/knowledge")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    from services.data.synth import make_spec, write_dataset

    spec = make_spec("demo", splits={"train": 40, "val": 16, "test": 0})
    manifest = write_dataset(spec, tmp_path_factory.mktemp("data"), seed=0, manifest_name="manifest.jsonl")
    return load_config("deploy/configs/demo.yaml", [f"data.manifest={manifest}"]), manifest


def test_match_key_rule() -> None:
    keys = ["cxr/nodule", "cxr/nodule-mass", "cxr/consolidation", "cxr/pleural-effusion", "cxr/mass"]
    assert match_key("large consolidation in the right middle zone", keys, KB) == ("cxr/consolidation",
                                                                                   "consolidation")
    assert match_key("Left PLEURAL-effusion, small", keys, KB) == ("cxr/pleural-effusion", "pleural effusion")
    longest = ("cxr/nodule-mass", "nodule or mass")
    assert match_key("a nodule or mass at the apex", keys, KB) == longest
    assert match_key("two nodules", keys, KB) == ("cxr/nodule", "nodules")  # a synonym
    assert match_key("massive opacity", keys, KB) == (None, None)  # whole words only: 'mass' is not 'massive'
    assert match_key("nodule", ["ct/unknown-key"], KB) == (None, None)


def test_choice_order_request_phrase_only_key_none_off() -> None:
    trained = TrainedOn(run="r", grounding_keys={"cxr/nodule": 3, "cxr/mass": 2})
    assert choose_knowledge("mass", "cxr/nodule", trained, KB, True).source == "request"
    assert choose_knowledge("a mass", None, trained, KB, True).key == "cxr/mass"
    assert choose_knowledge("a shadow", None, trained, KB, True).source == "none"
    one = TrainedOn(run="r", grounding_keys={"cxr/chest-radiograph": 9})
    assert choose_knowledge("a shadow", None, one, KB, True) .key == "cxr/chest-radiograph"
    assert choose_knowledge("a mass", None, trained, KB, False).source == "off"
    assert choose_knowledge("a mass", None, trained, None, True).source == "off"
    unread = TrainedOn(run="r", note="manifest not readable")  # a run whose data is elsewhere: no guessing
    assert choose_knowledge("a mass", None, unread, KB, True).source == "none"
    bare = TrainedOn()  # a bare model served with a knowledge folder: every key of it
    assert choose_knowledge("left pleural effusion", None, bare, KB, True).key == "cxr/pleural-effusion"


def test_trained_on_reads_the_runs_own_data(demo_run: tuple[object, Path]) -> None:
    cfg, manifest = demo_run
    facts = trained_on(cfg, "runs/demo", KB)  # type: ignore[arg-type]
    assert facts.modalities == ("chest x-ray",) and facts.splits == ("train",)
    assert facts.records == {"grounding": 40} and sum(facts.grounding_keys.values()) == 40
    assert facts.note is None and facts.manifest == str(manifest)


def test_served_prompt_equals_evaluations_for_every_held_out_record(demo_run: tuple[object, Path]) -> None:
    cfg, manifest_path = demo_run
    facts = trained_on(cfg, "runs/demo", KB)  # type: ignore[arg-type]
    manifest = load_manifest(manifest_path, report=lambda _: None)
    held_out = manifest.select(split="val", task="grounding")
    assert len(held_out) == 16
    for record in held_out:
        evaluated = rollout_request(record, manifest.image_path(record))  # what eval and training send
        choice = choose_knowledge(record.phrase, None, facts, KB, True)
        upload = DecodedImage(image=evaluated.image, width=record.width or 0, height=record.height or 0,
                              kind="png")
        served = serve_request(0, GroundRequest(upload, record.phrase, choice))
        assert isinstance(served, RolloutRequest) and served.knowledge_key == record.knowledge_key
        a = build_prompt(evaluated, "input_pixels", KB, True)
        b = build_prompt(served, "input_pixels", KB, True)
        assert a.user_text == b.user_text and a.injected_knowledge is not None, record.id
        # a multi-box run (issue 31): both ask for the list form, as training built it
        listed = build_prompt(rollout_request(record, manifest.image_path(record), multi_box=True),
                              "input_pixels", KB, True)
        served_list = build_prompt(serve_request(0, GroundRequest(upload, record.phrase, choice), True),
                                   "input_pixels", KB, True)
        assert listed.user_text == served_list.user_text != a.user_text and "[]" in listed.user_text
