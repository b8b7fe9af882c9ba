"""The transformers reference engine: `generate` one prompt at a time, LoRA through PEFT."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rollout.config import RolloutConfig, SamplingConfig
from rollout.contracts import Completion, FinishReason
from rollout.engines import AdapterSpec, vision_token_ids
from rollout.images import family_of
from rollout.processing import PreparedPrompt


class HfEngine:
    """`AutoModelForImageTextToText.generate` with the log-probs of the distribution it sampled from
    (generate's processed scores: bad words, min length and temperature applied), as vLLM's engine reports."""

    def __init__(self, model_dir: str | Path, config: RolloutConfig, seed: int) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoTokenizer

        self.torch = torch
        self.generator_seed = seed
        torch.manual_seed(seed)
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[config.dtype]
        self.base = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=dtype)
        self.base.eval()  # type: ignore[no-untyped-call]
        self.model: Any = self.base
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.bad_words = [[i] for i in vision_token_ids(self.tokenizer, family_of(model_dir))]
        eos = self.base.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = self.base.generation_config.pad_token_id
        self.adapter_version = 0
        self._spec = AdapterSpec(0, None)  # the live adapter (version 0: the base model)

    def generate(self, prompts: Sequence[PreparedPrompt], n: int,
                 sampling: SamplingConfig) -> list[tuple[Completion, ...]]:
        """n completions per prompt; greedy (temperature 0) decodes once and repeats it n times."""
        return [self._group(p, n, sampling) for p in prompts]

    def _group(self, p: PreparedPrompt, n: int, sampling: SamplingConfig) -> tuple[Completion, ...]:
        torch = self.torch
        greedy = sampling.temperature == 0.0
        ids = torch.from_numpy(p.prompt_token_ids)[None]  # [1, P]
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                  "pixel_values": torch.from_numpy(p.pixel_values).to(self.base.dtype),
                  "image_grid_thw": torch.from_numpy(p.image_grid_thw),
                  "mm_token_type_ids": torch.from_numpy(p.mm_token_type_ids)[None]}
        sample_kw: dict[str, Any] = ({"do_sample": False} if greedy else
                                     {"do_sample": True, "temperature": sampling.temperature,
                                      "top_p": sampling.top_p, "num_return_sequences": n})
        if p.prompt.seed is not None:
            torch.manual_seed(p.prompt.seed)  # per-request sampling, independent of the worker
        with torch.no_grad():
            out = self.model.generate(**inputs, **sample_kw, max_new_tokens=sampling.max_new_tokens,
                                      min_new_tokens=sampling.min_new_tokens,
                                      bad_words_ids=self.bad_words, output_scores=True,
                                      return_dict_in_generate=True, pad_token_id=self.pad_id, top_k=None)
        new = out.sequences[:, ids.shape[1]:]  # [n or 1, T]
        scores = torch.stack(out.scores, dim=1).float()  # [n or 1, T, V], after processors and temperature
        logp = torch.log_softmax(scores, dim=-1).gather(-1, new[..., None])[..., 0]  # [n or 1, T]
        completions = tuple(self._completion(new[i].tolist(), logp[i].tolist()) for i in range(new.shape[0]))
        return completions * n if greedy else completions

    def _completion(self, tokens: list[int], logprobs: list[float]) -> Completion:
        # generate pads finished rows; cut after the first end-of-sequence id (kept, as vLLM keeps it)
        end = next((k + 1 for k, t in enumerate(tokens) if t in self.eos_ids), None)
        reason: FinishReason = "stop" if end is not None else "length"
        tokens, logprobs = tokens[:end], logprobs[:end]
        text = str(self.tokenizer.decode(tokens, skip_special_tokens=True))
        return Completion(text=text, token_ids=tuple(tokens), logprobs=tuple(logprobs), finish_reason=reason)

    def load_adapter(self, adapter: AdapterSpec) -> None:
        """Switch to `adapter` (unwrap the previous one, no merge, and wrap the base with the new one). A load
        that fails puts the previous adapter back before raising, so the engine keeps serving it (PEFT wraps
        the base in place, so the two cannot be held side by side as vLLM's two slots do)."""
        previous = self._spec
        try:
            self._wrap(adapter)
        except Exception as exc:  # re-raised below, after the previous adapter is live again
            self._wrap(previous)
            raise RuntimeError(f"transformers could not load adapter v{adapter.version} from {adapter.path}: "
                               f"{exc}; adapter v{previous.version} stays live") from exc

    def _wrap(self, adapter: AdapterSpec) -> None:
        from peft import PeftModel

        if self.model is not self.base:
            self.base = self.model.unload()
            self.model = self.base
        if adapter.path is not None:
            self.model = PeftModel.from_pretrained(self.base, adapter.path, is_trainable=False).eval()
        self._spec = adapter
        self.adapter_version = adapter.version

    def close(self) -> None:
        """Nothing to release beyond the Python objects."""
