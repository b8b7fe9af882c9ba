"""In-process stand-ins for the driver's seams (services/training/seams.py), so `train_loop.run` runs in
milliseconds:
a scripted rollout pool, a learner that records what it is given (its checkpoints and exports are real PEFT
adapter folders), the real reward scorer without an actor, and a control queue. Shared by the unit tier
(tests/unit/services) and the integration tests whose real component is not a training engine (the MLflow
server of tests/integration/test_tracking_mlflow.py); tests/ is on sys.path through its conftest.py. Not
collected (no test_ prefix)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from learner.batch import SamplingSpec, StepMetrics, TrainBatch, TrainSample
from learner.export import LoraArtefact
from rewards.config import RewardConfig
from rewards.scorer import RewardScorer, ScoredBatch
from rewards.scoring import RewardTarget, ScheduleSnapshot
from rollout.config import SamplingConfig
from rollout.contracts import Completion, RolloutGroup, RolloutRequest
from rollout.images import ImageFrame
from services.cluster.control import JobStatus
from services.config import RunConfig
from services.data.manifest import Manifest
from services.data.records import Record
from services.training.metrics import MetricsWriter
from services.training.seams import RunHandles

SIZE = 100  # images are SIZE x SIZE, seen as they are (input pixels = original pixels)
Answer = Callable[[RolloutRequest, int, int, SamplingConfig], str]  # (request, j, adapter version) -> text


def box_answer(box: Sequence[float]) -> str:
    return "<think>t</think><answer>" + json.dumps({"bbox_2d": [int(v) for v in box]}) + "</answer>"


def varied_answer(request: RolloutRequest, j: int, version: int, sampling: SamplingConfig) -> str:
    """Even-numbered records: every completion alike (a zero-variance group); odd: boxes that differ by the
    request's seed and the completion index; greedy (evaluation): one box."""
    index = int(request.prompt_id.rsplit("-", 1)[1])
    if sampling.temperature == 0.0 or index % 2 == 0:
        return box_answer((10, 10, 40, 50))
    shift = int(np.random.default_rng([request.seed or 0, j]).integers(0, 20))
    return box_answer((10 + shift, 10, 40 + shift, 50))


def write_records(folder: Path, n_train: int, n_val: int) -> Manifest:
    """Grounding records with one box each, on tiny real PNGs (the driver's request builder opens files)."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("L", (SIZE, SIZE)).save(folder / "img.png")
    records = [Record(id=f"{split}-{i}", image="img.png", width=SIZE, height=SIZE, split=split,
                      phrase=f"lesion {i}",
                      boxes=((10.0 + i, 10.0, 40.0 + i, 50.0),))
               for split, n in (("train", n_train), ("val", n_val)) for i in range(n)]
    return Manifest(folder / "manifest.jsonl", tuple(records))


@dataclass
class ScriptedPool:
    """Answers every request with `answer(request, j, adapter_version, sampling)` for j < n. `hung` maps a
    generate call's index to the workers that timed out in it (reported by `take_faults`, as RolloutPool
    does); loading a version in `refuse` fails as a refused adapter does, the previous one staying live."""

    answer: Answer
    group_size: int = 4
    version: int = 0
    workers: int = 1
    loads: list[int] = field(default_factory=list)
    resizes: list[int] = field(default_factory=list)
    calls: list[tuple[str, ...]] = field(default_factory=list)  # prompt ids of each generate call
    last_serving: tuple[int, ...] = ()
    hung: dict[int, int] = field(default_factory=dict)
    refuse: set[int] = field(default_factory=set)
    _timeouts: int = 0

    @property
    def size(self) -> int:
        return self.workers

    def generate(self, requests: Sequence[RolloutRequest], n: int | None = None,
                 sampling: SamplingConfig | None = None) -> list[RolloutGroup]:
        sampling = sampling or SamplingConfig(temperature=0.9)
        n = n or self.group_size
        self._timeouts += self.hung.get(len(self.calls), 0)
        self.calls.append(tuple(r.prompt_id for r in requests))
        self.last_serving = tuple(range(self.workers))
        return [RolloutGroup(
            prompt_id=r.prompt_id, task=r.task,
            completions=tuple(Completion(text=self.answer(r, j, self.version, sampling), token_ids=(5, 6, 7),
                                         logprobs=(-1.0, -1.0, -1.0), finish_reason="stop")
                              for j in range(n)),
            prompt_token_ids=np.arange(1, 6), frame=ImageFrame(SIZE, SIZE, SIZE, SIZE, "input_pixels"),
            injected_knowledge=None, adapter_version=self.version, pixel_values=np.zeros((4, 6), np.float32),
            image_grid_thw=np.array([[1, 2, 2]]), mm_token_type_ids=np.zeros(5, np.int64)) for r in requests]

    def load_adapter(self, version: int, artefact: Any) -> None:
        assert artefact.version == version, "the pushed artefact carries another version"
        if version in self.refuse:
            raise RuntimeError(f"adapter v{version} failed to load on rollout worker(s) [0]: LoRA rank 16 "
                               "is greater than max_lora_rank 8. Every worker serves adapter "
                               f"v{self.version} again")
        self.version = version
        self.loads.append(version)

    def resize(self, n: int) -> None:
        self.resizes.append(n)
        self.workers = n

    def wait_ready(self, timeout: float | None = None) -> None:
        return None

    def live_count(self) -> int:
        return self.workers

    def take_faults(self) -> dict[str, int]:
        row = {"rollout/worker_timeouts": self._timeouts, "rollout/requests_resent": 0}
        self._timeouts = 0
        return row

    def shutdown(self) -> None:
        return None


@dataclass
class RecordingLearner:
    """Records every batch; its 'weights' are the step count, so export and checkpoints are checkable."""

    steps: int = 0
    batches: list[TrainBatch] = field(default_factory=list)
    sft_batches: list[list[TrainSample]] = field(default_factory=list)
    stages: list[tuple[str, float, bool]] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)

    def begin_stage(self, kind: str, lr: float, carry_optimizer: bool) -> None:
        self.stages.append((kind, lr, carry_optimizer))

    def set_lr(self, lr: float) -> None:
        self.lrs.append(lr)

    def grpo_step(self, batch: TrainBatch) -> StepMetrics:
        self.batches.append(batch)
        self.steps += 1
        loss = float(sum(s.advantage ** 2 for s in batch.samples)) + self.steps  # depends on batch and state
        return _metrics(loss, len(batch.samples))

    def sft_step(self, samples: Sequence[TrainSample]) -> StepMetrics:
        self.sft_batches.append(list(samples))
        self.steps += 1
        return _metrics(float(self.steps), len(samples))

    def export(self, version: int) -> LoraArtefact:
        return LoraArtefact(version, {"m.lora_A.weight": torch.full((1, 1), float(self.steps))},
                            {"peft_type": "LORA", "r": 1})

    def save_checkpoint(self, directory: Path, adapter_dir: Path | None, version: int) -> Path:
        directory.mkdir(parents=True)
        (directory / "state.json").write_text(json.dumps({"steps": self.steps}))
        if adapter_dir is not None:
            self.export(version).save(adapter_dir)
        return directory

    def load_checkpoint(self, directory: Path) -> int:
        self.steps = int(json.loads((directory / "state.json").read_text())["steps"])
        return self.steps

    def shutdown(self) -> None:
        return None


def _metrics(loss: float, n: int) -> StepMetrics:
    return StepMetrics(loss=loss, kl=0.0, clip_fraction=0.0, entropy=1.0, ratio_mean=1.0, ratio_min=1.0,
                       ratio_max=1.0, grad_norm=1.0, sequences=n, tokens=3 * n, seconds=0.0)


class LocalReward:
    """The real RewardScorer, called in-process; `fail_at` makes the call of that (0-based) global step raise
    as a dead actor whose replacement died too would."""

    def __init__(self, config: RewardConfig, state: dict[str, Any] | None,
                 fail_at: int | None = None) -> None:
        self.scorer = RewardScorer(config)
        if state is not None:
            self.scorer.load_state_dict(state)
        self.state: dict[str, Any] | None = state
        self.calls, self.fail_at = 0, fail_at

    def score(self, groups: Sequence[tuple[Sequence[str], RewardTarget]], step: int, progress: float,
              under: ScheduleSnapshot | None = None) -> ScoredBatch:
        self.calls += 1
        if step == self.fail_at:
            raise RuntimeError("reward actor died and its replacement died too")
        scored = self.scorer.score_batch(groups, step, progress, under)
        self.state = self.scorer.state_dict()
        return scored

    def take_faults(self) -> dict[str, int]:
        return {"reward/actor_timeouts": 0, "reward/actor_deaths": 0}


@dataclass
class QueueControl:
    requests: list[int | None] = field(default_factory=list)  # one entry per step: a resize or None
    reports: list[JobStatus] = field(default_factory=list)

    def take_rollout_request(self) -> int | None:
        return self.requests.pop(0) if self.requests else None

    def report(self, status: JobStatus) -> None:
        self.reports.append(status)

    def close(self) -> None:
        return None


def sft_sample(record: Record, multi_box: bool = False) -> TrainSample:
    return TrainSample(prompt_ids=(1, 2, 3), completion_ids=(4, 5))


def handles(cfg: RunConfig, run_dir: Path, manifest: Manifest, pool: ScriptedPool, learner: RecordingLearner,
            control: QueueControl, reward: Callable[[RewardConfig, dict[str, Any] | None], Any] = LocalReward,
            writer: MetricsWriter | None = None) -> RunHandles:
    return RunHandles(cfg=cfg, run_dir=run_dir, manifest=manifest, sampling=SamplingSpec(temperature=0.9),
                      pool=pool, learner=learner, control=control, reward=reward, sft_sample=sft_sample,
                      writer=writer or MetricsWriter(run_dir, tensorboard=False, plots=False),
                      eval_records=manifest.select(split=cfg.data.eval_split)[:cfg.eval.max_samples])
