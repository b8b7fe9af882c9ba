"""What goes into the learner (``TrainSample``), what comes out (``StepMetrics``), and collation.

A ``TrainSample`` is one completion (GRPO) or one reference answer (SFT) with its prompt. The driver in
services/ builds them from rollout groups; ``collate`` pads a list of them into the tensors a Qwen-VL
forward pass takes, plus the masks the loss needs. Shapes: B samples, L = longest prompt + completion,
T = L - 1 next-token positions (position t predicts token t + 1), P image patches, D = 3 * 2 * 14 * 14
patch features for Qwen2/2.5-VL (3 * 2 * 16 * 16 for Qwen3-VL).
"""

from __future__ import annotations

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
        sampling_logprobs: the rollout engine's log-prob of each completion token (length Lc), for the
            train/inference mismatch metric; None when unknown.
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
                raise ValueError(f"TrainSample.image_grid_thw must be [1, 3], got {tuple(self.image_grid_thw.shape)}")
            if self.mm_token_type_ids is None:
                raise ValueError("TrainSample with an image needs mm_token_type_ids from the processor "
                                 "(transformers 5 Qwen-VL uses them to place the image features)")
        if self.mm_token_type_ids is not None and len(self.mm_token_type_ids) != len(self.prompt_ids):
            raise ValueError(f"TrainSample.mm_token_type_ids has {len(self.mm_token_type_ids)} entries for "
                             f"{len(self.prompt_ids)} prompt tokens: pass the processor's ids for this prompt")

    @property
    def num_tokens(self) -> int:
        """Prompt plus completion length."""
        return len(self.prompt_ids) + len(self.completion_ids)


@dataclass(frozen=True)
class StepMetrics:
    """One optimiser step, reduced over all ranks (means are over the global loss tokens).

    ``logprob_mismatch`` is the mean |learner logp - sampling logp| over tokens with sampling log-probs
    (None when none had them); ``ratio_*`` describe rho = exp(logp - logp_old) (1 with one update per
    batch); ``grad_norm`` is the global norm before clipping (NaN under ZeRO stage 0, where DeepSpeed does
    not report it); ``seconds`` is this step's wall time.
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


def collate(samples: Sequence[TrainSample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad samples into model inputs and loss tensors.

    Returns:
        ``input_ids [B, L]`` long, ``attention_mask [B, L]`` long, ``loss_mask [B, T]`` float (1 where
        position t predicts a completion token), ``advantages [B]`` float, ``sampling_logprobs [B, T]``
        float and ``sampling_mask [B, T]`` float (1 where a sampling log-prob is known); when any sample has
        an image also ``pixel_values [sum P, D]``, ``image_grid_thw [n_images, 3]`` (images in sample
        order) and ``mm_token_type_ids [B, L]`` (zeros over completions and padding).
    """
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
    pixels: list[torch.Tensor] = []
    grids: list[torch.Tensor] = []
    for i, s in enumerate(samples):
        lp, n = len(s.prompt_ids), s.num_tokens
        input_ids[i, :n] = torch.tensor(s.prompt_ids + s.completion_ids, dtype=torch.long)
        attention[i, :n] = 1
        # Completion token k sits at position lp + k and is predicted from position lp + k - 1.
        loss_mask[i, lp - 1 : n - 1] = 1.0
        if s.sampling_logprobs is not None and s.completion_ids:
            sampling[i, lp - 1 : n - 1] = torch.tensor(s.sampling_logprobs, dtype=torch.float32)
            sampling_mask[i, lp - 1 : n - 1] = 1.0
        if s.mm_token_type_ids is not None:
            mm_types[i, :lp] = torch.tensor(s.mm_token_type_ids, dtype=torch.long)
        if s.pixel_values is not None and s.image_grid_thw is not None:
            pixels.append(s.pixel_values)
            grids.append(s.image_grid_thw.to(torch.long))
    out = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "loss_mask": loss_mask,
        "advantages": torch.tensor([s.advantage for s in samples], dtype=torch.float32),
        "sampling_logprobs": sampling,
        "sampling_mask": sampling_mask,
    }
    if has_image:
        out["pixel_values"] = torch.cat(pixels, dim=0)
        out["image_grid_thw"] = torch.cat(grids, dim=0)
        out["mm_token_type_ids"] = mm_types
    return out


def micro_batches(samples: Sequence[TrainSample], size: int) -> list[list[TrainSample]]:
    """Consecutive chunks of at most ``size`` samples, in order (the last one may be shorter)."""
    if size < 1:
        raise ValueError(f"micro-batch size must be >= 1, got {size}")
    return [list(samples[i : i + size]) for i in range(0, len(samples), size)]


def shard(samples: Sequence[TrainSample], world_size: int) -> list[list[TrainSample]]:
    """Split a global batch into ``world_size`` contiguous shards whose sizes differ by at most one.

    Every rank must get at least one sample: a rank with nothing to run cannot join the gradient reduction.
    """
    if len(samples) < world_size:
        raise ValueError(f"a global batch of {len(samples)} samples cannot feed {world_size} learner ranks: "
                         "give at least one sample per rank (raise prompts_per_step or lower learner.num_ranks)")
    base, extra = divmod(len(samples), world_size)
    out: list[list[TrainSample]] = []
    start = 0
    for r in range(world_size):
        n = base + (1 if r < extra else 0)
        out.append(list(samples[start : start + n]))
        start += n
    return out
