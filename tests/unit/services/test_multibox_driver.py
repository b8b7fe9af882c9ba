"""A multi-box GRPO stage through the driver, on fakes (issue 31): requests ask for lists, negatives are
trained, answers are scored as sets, and the held-out evaluation reports the set metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from driver_fakes import SIZE, LocalReward, QueueControl, RecordingLearner, ScriptedPool, handles

from services.config import RunConfig
from services.data.manifest import Manifest
from services.data.records import Record
from services.training import train_loop


def _records(folder: Path) -> Manifest:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.new("L", (SIZE, SIZE)).save(folder / "img.png")
    boxes = {0: (), 1: ((10.0, 10.0, 40.0, 50.0),), 2: ((5.0, 5.0, 20.0, 20.0), (40.0, 40.0, 60.0, 60.0))}
    records = [Record(id=f"{split}-{i}", image="img.png", width=SIZE, height=SIZE, split=split,
                      phrase="every mass", boxes=boxes[i % 3])
               for split in ("train", "val") for i in range(3)]
    return Manifest(folder / "manifest.jsonl", tuple(records))


@pytest.mark.parametrize("boxes_mode", ["set", "single"])
def test_a_multi_box_stage_asks_for_lists_and_scores_sets(tmp_path: Path, boxes_mode: str) -> None:
    manifest = _records(tmp_path / "data")
    truth = {r.id: r.boxes for r in manifest.records}
    asked: list[bool] = []

    def answer(request, j, version, sampling):  # type: ignore[no-untyped-def]
        asked.append(request.multi_box)
        listed = [{"bbox_2d": [int(v) for v in b]} for b in truth[request.prompt_id]]
        # half the group answers the truth as a list, half its first box alone (a fixed box on a negative)
        alone = listed[0] if listed else {"bbox_2d": [10, 10, 40, 50]}
        body = json.dumps(listed) if j % 2 == 0 else json.dumps(alone)
        return f"<think>t</think><answer>{body}</answer>"

    cfg = RunConfig.model_validate({
        "name": "multi", "output_dir": str(tmp_path / "runs"), "model": {"path": "unused"},
        "data": {"manifest": "unused"},
        "stages": [{"name": "rl", "kind": "grpo", "steps": 2, "prompts_per_step": 3, "refill_cap": 0,
                    "drop_zero_variance": False, "multi_box": True}],
        "rollout": {"group_size": 2}, "reward": {"w_recite": 0.0, "boxes": boxes_mode, "accuracy": "fixed"},
        "eval": {"at_start": False, "max_samples": 3, "overlays": 0, "samples": 0},
        "logging": {"samples_every": 1}})
    pool = ScriptedPool(answer, group_size=2)
    rows: list[dict[str, object]] = []
    def start(c: RunConfig, d: Path):  # type: ignore[no-untyped-def]
        return handles(c, d, manifest, pool, RecordingLearner(), QueueControl(), LocalReward)

    train_loop.run(cfg, run_dir=tmp_path / "run", on_step=lambda s, r: rows.append(r), start=start)
    assert asked and all(asked)  # every request of the stage and of its evaluation asked for a list
    trained = {i for call in pool.calls for i in call if i.startswith("train-")}
    assert "train-0" in trained  # the negative record is trained
    # Per prompt: [] / one box / two boxes as the truth (acc 1 each under `set`), and the first box alone
    # (0 on the negative, 1 on the one-box record, F1 2/3 on the two-box record). Under `single` [] does not
    # parse and nothing is right on the negative, and the first box of the two-box record earns 1.
    acc = [r["reward/acc"] for r in rows]
    expected = (1 + 0 + 1 + 1 + 1 + 2 / 3) / 6 if boxes_mode == "set" else (0 + 0 + 1 + 1 + 1 + 1) / 6
    assert acc[0] == pytest.approx(expected)
    assert rows[-1]["eval/sets/negatives/fp_rate"] == 0.0 and rows[-1]["eval/sets/AP@0.5"] == 100.0
    written = (tmp_path / "run" / "samples" / "train-step-1.jsonl").read_text()
    sampled = [json.loads(x) for x in written.splitlines()]
    by_answer = {(s["prompt_id"], s["completion"]): s for s in sampled}
    if boxes_mode == "set":  # every box of each answer, [] for "not present"
        assert by_answer[("train-2", 0)]["boxes"] == [[5.0, 5.0, 20.0, 20.0], [40.0, 40.0, 60.0, 60.0]]
        assert by_answer[("train-0", 0)]["boxes"] == []
    else:
        assert all("boxes" not in s for s in sampled)
