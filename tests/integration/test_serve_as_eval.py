"""The endpoint answers as evaluation does (issue 35): for held-out records of a run that injected knowledge,
a request with only the image file and the phrase gets evaluation's greedy answer, text for text, on a real
(tiny, random) model through the transformers engine. No Ray: the service and the evaluation run in-process.

Before, the served prompt lacked the knowledge that training and evaluation put in it, and the answers
differed; the last assertion shows they do on this model when the key is dropped. A run with a multi_box
stage is served in the list form and its answers read as sets, equal to evaluation's (issue 31).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_served_answer_equals_evaluations(tiny_model_dir: Path, demo_data: Path, tmp_path: Path) -> None:
    from services.config import load_config, write_resolved
    from services.data.manifest import load_manifest
    from services.evaluation.heldout import predict
    from services.serve.config import ServeArgs
    from services.serve.core import GroundingService, GroundRequest
    from services.serve.trained_on import KnowledgeChoice

    cfg = load_config("deploy/configs/demo.yaml", [
        f"data.manifest={demo_data}", f"model.path={tiny_model_dir}", "rollout.engine=hf",
        "rollout.sampling.max_new_tokens=24"])
    run = tmp_path / "run"
    write_resolved(cfg, run)
    manifest = load_manifest(demo_data, report=lambda _: None)
    records = manifest.select(split="val", task="grounding")
    service = GroundingService(ServeArgs(run_dir=str(run)))
    try:
        assert service.sampling.max_new_tokens == 24  # evaluation's cap, from the run
        evaluated = predict(service.worker, manifest, records, cfg.rollout.sampling.max_new_tokens)
        checked = [service.check(manifest.image_path(r).read_bytes(), r.phrase) for r in records]
        served = service.ground(checked)
        for record, request, ev, sv in zip(records, checked, evaluated, served, strict=True):
            assert request.knowledge.key == record.knowledge_key and request.knowledge.source == "phrase"
            assert sv.text == ev.text and sv.box == ev.box, record.id
        bare = service.ground([GroundRequest(c.image, c.phrase, KnowledgeChoice(None, "none"))
                               for c in checked])
        assert any(b.text != ev.text for b, ev in zip(bare, evaluated, strict=True))
    finally:
        service.close()
    # A run with a multi_box stage (issue 31): asked in the list form and read as a set, as evaluation does.
    write_resolved(load_config("deploy/configs/demo.yaml", [
        f"data.manifest={demo_data}", f"model.path={tiny_model_dir}", "rollout.engine=hf",
        "rollout.sampling.max_new_tokens=24", "stages.0.multi_box=true"]), tmp_path / "multi")
    service = GroundingService(ServeArgs(run_dir=str(tmp_path / "multi")))
    try:
        assert service.multi_box and service.info()["multi_box"]
        evaluated_sets = predict(service.worker, manifest, records, cfg.rollout.sampling.max_new_tokens, True)
        served_sets = service.ground(checked)
        for record, ev, sv in zip(records, evaluated_sets, served_sets, strict=True):
            assert sv.text == ev.text and sv.boxes == (ev.boxes or ()), record.id
            assert sv.parse_ok == (ev.boxes is not None), record.id
        assert any(m.text != ev.text for m, ev in zip(served_sets, evaluated, strict=True))  # another prompt
    finally:
        service.close()
