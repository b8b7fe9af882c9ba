"""What goes into the learner (``TrainSample``, ``TrainBatch``), what comes out (``StepMetrics``), and
collation (``Collated``).

A ``TrainSample`` is one completion (GRPO) or one reference answer (SFT) with its prompt. The driver in
services/ builds them from rollout groups; ``collate`` pads a list of them into the tensors a Qwen-VL
forward pass takes, plus the masks the loss needs. Shapes: B samples, L = longest prompt + completion,
T = L - 1 next-token positions (position t predicts token t + 1), P image patches, D = 3 * 2 * 14 * 14
patch features for Qwen2/2.5-VL (3 * 2 * 16 * 16 for Qwen3-VL).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TrainSample:
    """One completion and its prompt, as the learner trains on it.

    Attributes:
        prompt_ids: prompt token ids, including the expanded ``<|image_pad|>`` run exactly as the
            processor produced it (length Lp).
        completion_ids: sampled completion (GRPO) or reference answer (SFT) token ids (length Lc >= 0);
            the loss covers exactly these tokens.
        advantage: the completion's group advantage (GRPO); ignored by SFT.
        sampling_logprobs: the rollout engine's behaviour log-prob of each completion token (length Lc), of
            the distribution it sampled from (``SamplingSpec``), for the adapter-sync alarm; None when
            unknown.
        adapter_version: the adapter version that sampled the completion (GRPO): the learner takes the
            ratio's logp_old under that version when its own weights have moved on (docs/algorithms.md).
        truncated: the completion hit the length cap (no end-of-sequence); masked from the loss when
            ``grpo.mask_truncated_completions`` is on.
        pixel_values: ``[P, D]`` float image patches from the processor, or None for a text-only prompt.
        image_grid_thw: ``[1, 3]`` int (t, h, w) patch grid of the one image, with ``pixel_values``.
        mm_token_type_ids: the processor's per-prompt-token modality ids (length Lp; 1 on image pads),
            required with an image by transformers 5 Qwen-VL; collation extends it with zeros over the
            completion.
    """

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    advantage: float = 0.0
    sampling_logprobs: tuple[float, ...] | None = None
    adapter_version: int = 0
    truncated: bool = False
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    mm_token_type_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("TrainSample.prompt_ids is empty: a completion needs at least one prompt token")
        if self.sampling_logprobs is not None and len(self.sampling_logprobs) != len(self.completion_ids):
            raise ValueError(f"TrainSample.sampling_logprobs has {len(self.sampling_logprobs)} values for "
                             f"{len(self.completion_ids)} completion tokens: give one per token or None")
        if (self.pixel_values is None) != (self.image_grid_thw is None):
            raise ValueError("TrainSample: pixel_values and image_grid_thw go together (both or neither)")
        if self.image_grid_thw is not None:
            if tuple(self.image_grid_thw.shape) != (1, 3):
                raise ValueError("TrainSample.image_grid_thw must be [1, 3], got "
                                 f"{tuple(self.image_grid_thw.shape)}")
            if self.mm_token_type_ids is None:
                raise ValueError("TrainSample with an image needs mm_token_type_ids from the processor "
                                 "(transformers 5 Qwen-VL uses them to place the image features)")
        if self.mm_token_type_ids is not None and len(self.mm_token_type_ids) != len(self.prompt_ids):
            raise ValueError(f"TrainSample.mm_token_type_ids has {len(self.mm_token_type_ids)} entries for "
                             f"{len(self.prompt_ids)} prompt tokens: pass the processor's ids for this "
                             "prompt")

    @property
    def num_tokens(self) -> int:
        """Prompt plus completion length."""
        return len(self.prompt_ids) + len(self.completion_ids)


@dataclass(frozen=True)
class SamplingSpec:
    """The distribution a rollout engine sampled from, which the learner recomputes exactly.

    Log-probs of the sampled tokens are taken of ``softmax((logits + bias) / temperature)``, where
    ``bias`` is -100 on ``suppressed_token_ids`` (the engines' vision-token logit bias) and -inf on
    ``eos_token_ids`` at completion positions before ``min_new_tokens`` -- the order and quantity vLLM's
    ``processed_logprobs`` report (logit processors, then temperature). Top-p is 1 in training (config
    refuses less), so no truncation needs mirroring. SFT and evaluation use the default (temperature 1).
    """

    temperature: float = 1.0
    suppressed_token_ids: tuple[int, ...] = ()
    min_new_tokens: int = 0
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.temperature > 0.0:
            raise ValueError(f"SamplingSpec.temperature must be > 0 (greedy decoding has no log-probs to "
                             f"train on), got {self.temperature}")
        if self.min_new_tokens > 0 and not self.eos_token_ids:
            raise ValueError("SamplingSpec.min_new_tokens > 0 needs eos_token_ids (the tokens it forbids)")


@dataclass(frozen=True)
class StepMetrics:
    """One optimiser step, reduced over all ranks (means are over the global loss tokens).

    ``logprob_mismatch`` is the sync alarm's reading: mean |learner logp - behaviour logp| (nats/token) over
    the first micro-batch after an adapter version change, from an eval-mode forward (no MLAE mask) under
    the version that sampled it; None when no new version came or no sample had behaviour log-probs.
    ``ratio_*`` and ``clip_fraction`` describe rho = exp(logp - logp_old) (exactly 1 and 0 on-policy);
    ``truncated`` counts completions masked from the loss for hitting the length cap; ``grad_norm`` is the
    global norm before clipping (NaN under ZeRO stage 0, where DeepSpeed does
    not report it); ``seconds`` is this step's wall time.
    ``correction_*`` (None when ``grpo.rollout_correction`` is none; learner/correction.py): the ratio of
    learner to engine probability the mode applies (per token, or per sequence) before truncation or
    masking, its mean/min/max; the fractions of loss tokens and of sequences truncated or masked; and the
    k3 estimate of KL(rollout || learner) per known token (nats).
    """

    loss: float
    kl: float
    clip_fraction: float
    entropy: float
    ratio_mean: float
    ratio_min: float
    ratio_max: float
    grad_norm: float
    sequences: int
    tokens: int
    seconds: float
    logprob_mismatch: float | None = None
    truncated: int = 0
    correction_ratio_mean: float | None = None
    correction_ratio_min: float | None = None
    correction_ratio_max: float | None = None
    correction_token_fraction: float | None = None
    correction_sequence_fraction: float | None = None
    correction_kl: float | None = None


@dataclass(frozen=True)
class TrainBatch:
    """What one GRPO update receives: the completions and the distribution they were sampled from."""

    samples: tuple[TrainSample, ...]
    sampling: SamplingSpec = SamplingSpec()


@dataclass(frozen=True, eq=False)
class Collated:
    """One micro-batch as tensors (``collate``). B samples, L = longest prompt + completion, T = L - 1
    next-token positions (position t predicts token t + 1), P image patches, D patch features."""

    input_ids: torch.Tensor  # [B, L] long, right-padded
    attention_mask: torch.Tensor  # [B, L] long
    loss_mask: torch.Tensor  # [B, T] float: 1 where position t predicts a completion token that trains
    completion_start: torch.Tensor  # [B] long: the position predicting each completion's first token
    truncated: torch.Tensor  # [B] bool: the completion hit the length cap
    adapter_version: torch.Tensor  # [B] long: the adapter version that sampled it
    advantages: torch.Tensor  # [B] float
    sampling_logprobs: torch.Tensor  # [B, T] float: behaviour log-probs (0 where unknown)
    sampling_mask: torch.Tensor  # [B, T] float: 1 where a behaviour log-prob is known
    pixel_values: torch.Tensor | None = None  # [sum P, D] float, images in sample order
    image_grid_thw: torch.Tensor | None = None  # [n_images, 3] long
    mm_token_type_ids: torch.Tensor | None = None  # [B, L] long: 1 on image pads, 0 elsewhere

    @property
    def targets(self) -> torch.Tensor:
        """``[B, T]`` the token each position predicts."""
        return self.input_ids[:, 1:]

    def model_inputs(self, device: torch.device, pixel_dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The keyword arguments of a Qwen-VL forward pass, on ``device``."""
        out = {"input_ids": self.input_ids.to(device), "attention_mask": self.attention_mask.to(device)}
        if self.pixel_values is not None and self.image_grid_thw is not None and self.mm_token_type_ids is not None:  # noqa: E501
            out |= {"pixel_values": self.pixel_values.to(device, pixel_dtype),
                    "image_grid_thw": self.image_grid_thw.to(device),
                    "mm_token_type_ids": self.mm_token_type_ids.to(device)}
        return out


def collate(samples: Sequence[TrainSample], pad_id: int) -> Collated:
    """Right-pad samples into model inputs and loss tensors (see ``Collated`` for shapes)."""
    if not samples:
        raise ValueError("collate needs at least one TrainSample")
    b = len(samples)
    length = max(s.num_tokens for s in samples)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)  # [B, L]
    attention = torch.zeros((b, length), dtype=torch.long)  # [B, L]
    loss_mask = torch.zeros((b, length - 1), dtype=torch.float32)  # [B, T]
    sampling = torch.zeros((b, length - 1), dtype=torch.float32)  # [B, T]
    sampling_mask = torch.zeros((b, length - 1), dtype=torch.float32)  # [B, T]
    has_image = any(s.pixel_values is not None for s in samples)
    mm_types = torch.zeros((b, length), dtype=torch.long)  # [B, L]
    starts = torch.zeros(b, dtype=torch.long)  # [B]
    pixels: list[torch.Tensor] = []
    grids: list[torch.Tensor] = []
    for i, s in enumerate(samples):
        lp, n = len(s.prompt_ids), s.num_tokens
        input_ids[i, :n] = torch.tensor(s.prompt_ids + s.completion_ids, dtype=torch.long)
        attention[i, :n] = 1
        # Completion token k sits at position lp + k and is predicted from position lp + k - 1.
        loss_mask[i, lp - 1 : n - 1] = 1.0
        starts[i] = lp - 1
        if s.sampling_logprobs is not None and s.completion_ids:
            sampling[i, lp - 1 : n - 1] = torch.tensor(s.sampling_logprobs, dtype=torch.float32)
            sampling_mask[i, lp - 1 : n - 1] = 1.0
        if s.mm_token_type_ids is not None:
            mm_types[i, :lp] = torch.tensor(s.mm_token_type_ids, dtype=torch.long)
        if s.pixel_values is not None and s.image_grid_thw is not None:
            pixels.append(s.pixel_values)
            grids.append(s.image_grid_thw.to(torch.long))
    return Collated(
        input_ids=input_ids, attention_mask=attention, loss_mask=loss_mask, completion_start=starts,
        truncated=torch.tensor([s.truncated for s in samples], dtype=torch.bool),
        adapter_version=torch.tensor([s.adapter_version for s in samples], dtype=torch.long),
        advantages=torch.tensor([s.advantage for s in samples], dtype=torch.float32),
        sampling_logprobs=sampling, sampling_mask=sampling_mask,
        pixel_values=torch.cat(pixels, dim=0) if has_image else None,
        image_grid_thw=torch.cat(grids, dim=0) if has_image else None,
        mm_token_type_ids=mm_types if has_image else None)


def micro_batches(samples: Sequence[TrainSample], size: int) -> list[list[TrainSample]]:
    """Consecutive chunks of at most ``size`` samples, in order (the last one may be shorter)."""
    if size < 1:
        raise ValueError(f"micro-batch size must be >= 1, got {size}")
    return [list(samples[i : i + size]) for i in range(0, len(samples), size)]


def contiguous_shards(count: int, parts: int) -> list[range]:
    """Split ``range(count)`` into ``parts`` contiguous ranges whose sizes differ by at most one, the larger
    first; empty ones are dropped. The one even split: learner ranks (``shard``) and rollout workers
    (services/cluster/rollout_pool.py) both use it.

    >>> contiguous_shards(5, 2)
    [range(0, 3), range(3, 5)]
    """
    if parts < 1:
        raise ValueError(f"need at least one part, got {parts}")
    base, extra = divmod(count, parts)
    bounds = list(itertools.accumulate([base + (1 if i < extra else 0) for i in range(parts)], initial=0))
    return [range(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def shard(samples: Sequence[TrainSample], world_size: int) -> list[list[TrainSample]]:
    """Split a global batch into ``world_size`` contiguous shards whose sizes differ by at most one.

    Every rank must get at least one sample: a rank with nothing to run cannot join the gradient reduction.
    """
    if len(samples) < world_size:
        raise ValueError(f"a global batch of {len(samples)} samples cannot feed {world_size} learner ranks: "
                         "give at least one sample per rank (raise prompts_per_step or lower "
                         "learner.num_ranks)")
    return [list(samples[r.start : r.stop]) for r in contiguous_shards(len(samples), world_size)]
