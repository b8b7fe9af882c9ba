"""The rollout worker as a plain class: requests in, groups out (the Ray actor in worker.py forwards here)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from rollout.config import RolloutConfig, SamplingConfig
from rollout.contracts import RolloutGroup, RolloutRequest
from rollout.engines import AdapterPayload, AdapterSpec, RolloutEngine, write_adapter_dir
from rollout.images import convention_of, family_of
from rollout.knowledge import KnowledgeBase
from rollout.processing import PromptProcessor
from rollout.prompts import build_prompt


class RolloutWorkerCore:
    """One engine plus the processor that prepares its prompts.

    Each request is preprocessed once by the HF processor; the engine samples from the same text and
    image, and the group carries the processor's ids and image tensors for the learner.
    """

    def __init__(self, model_dir: str | Path, config: RolloutConfig, knowledge: KnowledgeBase | None = None,
                 seed: int | None = None) -> None:
        self.config = config
        self.knowledge = knowledge
        self.family = family_of(model_dir)
        self.convention = convention_of(self.family)
        self.processor = PromptProcessor(model_dir, self.family, config.min_pixels, config.max_pixels)
        self.engine: RolloutEngine = make_engine(model_dir, config, config.seed if seed is None else seed)
        self._adapter_root = Path(tempfile.mkdtemp(prefix="medground-adapters-"))
        self._adapter_dir: Path | None = None

    @property
    def adapter_version(self) -> int:
        return self.engine.adapter_version

    def generate(self, requests: Sequence[RolloutRequest], n: int | None = None,
                 sampling: SamplingConfig | None = None) -> list[RolloutGroup]:
        """One group of n completions (default: config.group_size) per request, in request order."""
        n = self.config.group_size if n is None else n
        if n < 1:
            raise ValueError(f"group size n must be >= 1, got {n}")
        sampling = self.config.sampling if sampling is None else sampling
        prepared = [self.processor.prepare(build_prompt(r, self.convention, self.knowledge,
                                                        self.config.inject_knowledge)) for r in requests]
        outputs = self.engine.generate(prepared, n, sampling)
        version = self.engine.adapter_version
        return [RolloutGroup(prompt_id=p.prompt.prompt_id, task=p.prompt.task, completions=completions,
                             prompt_token_ids=p.prompt_token_ids, frame=p.frame,
                             injected_knowledge=p.prompt.injected_knowledge, adapter_version=version,
                             pixel_values=p.pixel_values, image_grid_thw=p.image_grid_thw,
                             mm_token_type_ids=p.mm_token_type_ids)
                for p, completions in zip(prepared, outputs, strict=True)]

    def load_adapter(self, adapter: AdapterSpec | AdapterPayload | None) -> int:
        """Make an adapter live (None or version 0: the base model); returns the live version.

        Tensors are written to a worker-local PEFT directory first; the previous one is deleted once the
        engine has switched, since vLLM reads the files when the adapter is added. A load that fails raises
        with the previous adapter still live (the engines keep it) and its directory kept.
        """
        previous = self._adapter_dir
        new_dir = None
        if adapter is None:
            spec = AdapterSpec(0, None)
        elif isinstance(adapter, AdapterSpec):
            spec = adapter
        elif isinstance(adapter, AdapterPayload):
            new_dir = self._adapter_root / f"v{adapter.version}-{os.getpid()}-{id(adapter)}"
            spec = write_adapter_dir(adapter, new_dir)
        else:
            raise TypeError("load_adapter takes None, an AdapterSpec or an in-memory adapter (version, "
                            f"tensors, peft_config), got {type(adapter).__name__}")
        try:
            self.engine.load_adapter(spec)
        except BaseException:
            if new_dir is not None:
                shutil.rmtree(new_dir, ignore_errors=True)
            raise
        self._adapter_dir = new_dir
        if previous is not None and previous != new_dir:
            shutil.rmtree(previous, ignore_errors=True)
        return self.engine.adapter_version

    def close(self) -> None:
        """Release the engine and the local adapter files."""
        self.engine.close()
        shutil.rmtree(self._adapter_root, ignore_errors=True)


def make_engine(model_dir: str | Path, config: RolloutConfig, seed: int) -> RolloutEngine:
    """The engine named by `config.engine`."""
    match config.engine:
        case "vllm":
            from rollout.engine_vllm import VllmEngine

            return VllmEngine(model_dir, config, seed)
        case "hf":
            from rollout.engine_hf import HfEngine

            return HfEngine(model_dir, config, seed)
