"""The rollout worker actor: a thin Ray wrapper over `RolloutWorkerCore` (tests build the core directly)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import ray

from rollout.config import RolloutConfig, SamplingConfig
from rollout.contracts import RolloutGroup, RolloutRequest
from rollout.core import RolloutWorkerCore
from rollout.engines import AdapterPayload, AdapterSpec
from rollout.knowledge import KnowledgeBase


@ray.remote
class RolloutWorker:
    """Forwards to `RolloutWorkerCore`; resources are set by the pool with `.options(...)`."""

    def __init__(self, model_dir: str | Path, config: RolloutConfig, knowledge: KnowledgeBase | None,
                 seed: int) -> None:
        if config.torch_threads > 0:  # before the engine starts: vLLM's CPU worker pins the count at start-up
            import torch

            torch.set_num_threads(config.torch_threads)
        self.core = RolloutWorkerCore(model_dir, config, knowledge, seed)

    def generate(self, requests: Sequence[RolloutRequest], n: int | None,
                 sampling: SamplingConfig | None) -> list[RolloutGroup]:
        return self.core.generate(requests, n, sampling)

    def load_adapter(self, adapter: AdapterSpec | AdapterPayload | None) -> int:
        return self.core.load_adapter(adapter)

    def adapter_version(self) -> int:
        return self.core.adapter_version

    def pid(self) -> int:
        return os.getpid()

    def where(self) -> str:
        """This worker's process and node, for the pool's log lines about it."""
        ip = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        return f"pid {os.getpid()} on {ip}, node {ray.get_runtime_context().get_node_id()[:8]}"

    def close(self) -> None:
        self.core.close()
