"""The driver's seams: what `services/training/train_loop.py` needs from the cluster, as Protocols.

The Ray-backed classes satisfy them as they are (`RolloutPool`, `LearnerGroup`, `RewardClient`,
`ControlClient`); tests give the driver in-process fakes instead (tests/driver_fakes.py), so
the whole loop -- stages, refills, evaluation cadence, checkpoint and resume, control requests -- runs in
milliseconds. Artefacts cross these seams opaquely: the learner's `export` returns what the pool's
`load_adapter` accepts (an object ref on Ray).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from learner.batch import SamplingSpec, StepMetrics, TrainBatch, TrainSample
from rewards.config import RewardConfig
from rewards.scorer import ScoredBatch
from rewards.scoring import RewardTarget, ScheduleSnapshot
from rollout.config import SamplingConfig
from rollout.contracts import RolloutGroup, RolloutRequest
from services.cluster.control import JobStatus
from services.config import RunConfig
from services.data.manifest import Manifest
from services.data.records import Record

if TYPE_CHECKING:
    from services.training.metrics import MetricsWriter
    from services.training.trackers import Status


class Rollout(Protocol):
    """N rollout workers behind one call (services/cluster/rollout_pool.py)."""

    @property
    def size(self) -> int: ...

    last_serving: tuple[int, ...]

    def generate(self, requests: Sequence[RolloutRequest], n: int | None = None,
                 sampling: SamplingConfig | None = None) -> list[RolloutGroup]: ...

    def load_adapter(self, version: int, artefact: Any) -> None: ...

    def resize(self, n: int) -> None: ...

    def wait_ready(self, timeout: float | None = None) -> None: ...

    def live_count(self) -> int: ...

    def take_faults(self) -> dict[str, int]:
        """Counts of the faults handled since the last call (workers replaced, requests resent), as
        metrics."""
        ...

    def shutdown(self) -> None: ...


class Learner(Protocol):
    """The DeepSpeed ranks (services/cluster/learner_group.py)."""

    def begin_stage(self, kind: str, lr: float, carry_optimizer: bool) -> None: ...

    def set_lr(self, lr: float) -> None: ...

    def grpo_step(self, batch: TrainBatch) -> StepMetrics: ...

    def sft_step(self, samples: Sequence[TrainSample]) -> StepMetrics: ...

    def export(self, version: int) -> Any: ...

    def save_checkpoint(self, directory: Path, adapter_dir: Path | None, version: int) -> Path: ...

    def load_checkpoint(self, directory: Path) -> int: ...

    def shutdown(self) -> None: ...


class Reward(Protocol):
    """The reward actor's client (services/cluster/reward_client.py); `state` is the schedule after the last
    call."""

    state: dict[str, Any] | None

    def score(self, groups: Sequence[tuple[Sequence[str], RewardTarget]], step: int, progress: float,
              under: ScheduleSnapshot | None = None) -> ScoredBatch: ...

    def take_faults(self) -> dict[str, int]:
        """Counts of the faults handled since the last call (actors replaced), as metrics."""
        ...


class Control(Protocol):
    """The run's named control actor (services/cluster/control.py): operator requests in, status out."""

    def take_rollout_request(self) -> int | None: ...

    def report(self, status: JobStatus) -> None: ...

    def close(self) -> None: ...


@dataclass
class RunHandles:
    """The live parts of a run: cluster handles (the seams above) and local helpers."""

    cfg: RunConfig
    run_dir: Path
    manifest: Manifest
    sampling: SamplingSpec  # the rollout engines' sampling distribution, as the learner recomputes it
    pool: Rollout
    learner: Learner
    control: Control
    reward: Callable[[RewardConfig, dict[str, Any] | None], Reward]  # a reward client for a stage
    sft_sample: Callable[[Record, bool], TrainSample]  # a record's prompt and reference answer (multi_box)
    writer: MetricsWriter
    eval_records: tuple[Record, ...]

    def close(self, status: Status | None = "FINISHED") -> None:
        """Shut the run's parts down; the trackers' runs end with `status` (FINISHED, FAILED, KILLED)."""
        self.writer.close(status)
        self.pool.shutdown()
        self.learner.shutdown()
        self.control.close()
