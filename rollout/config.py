"""Configuration of a rollout engine: backend, sampling, image budget, prompts and what each engine may use.

How many engines run, where, and when one is declared lost is the pool's (services/config.py `PoolConfig`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SamplingConfig(_Strict):
    temperature: float = Field(0.9, ge=0.0, description="Sampling temperature [paper: 0.9]; 0 means greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(64, ge=1, description="Completion length cap in tokens.")
    min_new_tokens: int = Field(0, ge=0, description="End-of-sequence is forbidden before this many tokens "
                                                     "(0: off); benchmarks set it to max_new_tokens so "
                                                     "every completion is as long.")

    @model_validator(mode="after")
    def _min_within_max(self) -> SamplingConfig:
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"sampling.min_new_tokens ({self.min_new_tokens}) exceeds "
                             f"sampling.max_new_tokens ({self.max_new_tokens}); lower it or raise "
                             "max_new_tokens")
        return self


class RolloutConfig(_Strict):
    """One rollout engine (every worker of a pool runs one): what it samples and how it prompts."""

    engine: Literal["vllm", "hf"] = Field("vllm",
                                          description="vllm (the product) or hf (transformers reference).")
    group_size: int = Field(8, ge=1, description="G: completions per prompt [paper: 8].")
    sampling: SamplingConfig = SamplingConfig()
    torch_threads: int = Field(
        0, ge=0, description="CPU threads of each worker's engine (0: Ray's default, one per reserved CPU). "
                             "On a CPU machine the cores follow the schedule: with max_staleness 0 the "
                             "learner waits while the pool generates, so a worker may use every core (set "
                             "it to the core count); with overlap the worker and the learner run at once, "
                             "so split the cores between them (learner.torch_threads). Set before the "
                             "engine starts; no effect on GPU generation.")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallelism inside one worker.")
    min_pixels: int = Field(56 * 56, ge=28 * 28,
                            description="smart_resize lower pixel budget of the model input.")
    max_pixels: int = Field(112 * 112, ge=28 * 28,
                            description="smart_resize upper pixel budget of the model input.")
    max_model_len: int = Field(1024, ge=64,
                               description="vLLM context length (prompt + completion) in tokens.")
    kv_cache_gib: int = Field(1, ge=1,
                              description="KV cache of each CPU vLLM engine, in GiB: the engine sets "
                                          "VLLM_CPU_KVCACHE_SPACE from it before it starts (whatever the "
                                          "environment held); unused on GPUs, where gpu_memory_utilization "
                                          "sizes the cache.")
    inject_knowledge: bool = Field(True, description="VRFT-Aug prior-knowledge injection into prompts.")
    seed: int = Field(0,
                      description="Engine seed, for requests that carry none (training requests carry their "
                                  "own); worker k of a pool uses seed + k (default in a run: derived from "
                                  "the run's `seed`).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Engine weight dtype: float32 on CPU, bfloat16 on GPUs.")
    max_lora_rank: int = Field(8, ge=1,
                               description="Largest LoRA rank vLLM accepts (>= the adapter's rank r).")
    engine_in_process: bool = Field(
        True,
        description="Run vLLM's engine core inside the worker process (starts in seconds, dies with the "
                    "worker, but binds that process's threads to cores: use it in dedicated processes such "
                    "as worker actors); false runs it in a child process (overlaps scheduling on GPUs).")
    gpu_memory_utilization: float = Field(
        0.85, gt=0.0, le=1.0,
        description="Fraction of each GPU's memory vLLM may take (ignored on CPU, where "
                                          "kv_cache_gib sizes the cache); lower it when learners share GPUs.")

    @model_validator(mode="after")
    def _pixel_budget(self) -> RolloutConfig:
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) exceeds max_pixels ({self.max_pixels})")
        return self
