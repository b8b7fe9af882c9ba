"""The shared-prefix learner's batches: each prompt once, then its completions (docs/algorithms.md,
"Shared-prefix learner"; Prefix Grouper, arXiv 2506.05433).

A GRPO group is G completions of one prompt. The plain path (``learner.batch.collate``) runs G sequences
[prompt, completion_i]; here a group is one packed row [prompt, completion_1, ..., completion_k] with

- an attention mask in which the prompt is causal and each completion sees the prompt and itself causally,
  never another completion (``Packed.allowed``), and
- position ids in which each completion continues from the prompt's end exactly as in its own sequence
  (Qwen's 3-D mRoPE positions of the image included; ``packed_positions`` takes them from the model's own
  ``get_rope_index`` of [prompt, completion]).

Every completion token then sees the same keys at the same positions as in its own sequence, so its
log-prob, and the gradient through it, are those of the plain path (equal within float rounding; tests in
tests/unit/learner/test_packing.py). The prompt's activations are computed once and receive the gradient of
all its completions in one backward.

Which samples share a prompt is read from the samples themselves: consecutive samples with the same prompt
ids and the same image form a run (``prompt_runs``); services/convert.grpo_samples makes a group's samples
consecutive and lets them share one image tensor. Sharing an identical prefix is exact whatever its origin.

Micro-batches (``group_micro_batches``) hold whole groups, at most ``size`` completions each; a group of more
than ``size`` completions is split into pieces of at most ``size``, each packed with its own copy of the
prompt. Shapes: R packed rows, L packed length, N completions, C longest completion, K kept positions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from learner.batch import TrainSample, contiguous_shards, shard

# positions(sample, length) -> [3, length] long: the position ids of [prompt, `length - Lp` text tokens]
PositionFn = Callable[[TrainSample, int], torch.Tensor]


def same_prompt(a: TrainSample, b: TrainSample) -> bool:
    """Whether two samples have an identical prefix: prompt ids, modality ids and image (patches and grid)."""
    if a.prompt_ids != b.prompt_ids or a.mm_token_type_ids != b.mm_token_type_ids:
        return False
    if a.pixel_values is None or b.pixel_values is None:
        return a.pixel_values is b.pixel_values
    if a.pixel_values is b.pixel_values and a.image_grid_thw is b.image_grid_thw:
        return True  # the usual case: a group's samples share one tensor (services/convert.grpo_samples)
    assert a.image_grid_thw is not None and b.image_grid_thw is not None  # TrainSample checks both-or-neither
    return bool(a.pixel_values.shape == b.pixel_values.shape
                and torch.equal(a.image_grid_thw, b.image_grid_thw)
                and torch.equal(a.pixel_values, b.pixel_values))


def prompt_runs(samples: Sequence[TrainSample]) -> list[range]:
    """Maximal runs of consecutive samples sharing one prompt (``same_prompt``), in order.

    >>> # prompts A A B A -> [range(0, 2), range(2, 3), range(3, 4)]
    """
    runs: list[range] = []
    start = 0
    for i in range(1, len(samples) + 1):
        if i == len(samples) or not same_prompt(samples[start], samples[i]):
            runs.append(range(start, i))
            start = i
    return runs


def group_micro_batches(runs: Sequence[range], size: int) -> list[list[range]]:
    """Micro-batches of whole runs, at most ``size`` completions each, in order; a run longer than ``size``
    is cut into pieces of ``size`` (the last may be shorter), each its own micro-batch.

    >>> group_micro_batches([range(0, 3), range(3, 5), range(5, 11)], 4)
    [[range(0, 3)], [range(3, 5)], [range(5, 9)], [range(9, 11)]]
    """
    if size < 1:
        raise ValueError(f"micro-batch size must be >= 1, got {size}")
    out: list[list[range]] = []
    current: list[range] = []
    used = 0
    for run in runs:
        pieces = [range(s, min(s + size, run.stop)) for s in range(run.start, run.stop, size)]
        for piece in pieces:
            if current and used + len(piece) > size:
                out.append(current)
                current, used = [], 0
            current.append(piece)
            used += len(piece)
    if current:
        out.append(current)
    return out


def shard_groups(samples: Sequence[TrainSample], world_size: int) -> list[list[TrainSample]]:
    """Split a global batch into ``world_size`` contiguous shards of whole prompt runs (as even in runs as
    ``contiguous_shards`` makes them), so each rank packs every prompt it has once. With fewer runs than
    ranks the samples are split evenly instead (a run then spans ranks, each packing its own copy of the
    prompt: still exact, less shared)."""
    runs = prompt_runs(samples)
    if len(runs) < world_size:
        return shard(samples, world_size)
    return [list(samples[runs[r.start].start : runs[r.stop - 1].stop])
            for r in contiguous_shards(len(runs), world_size)]


@dataclass(frozen=True, eq=False)
class Packed:
    """One micro-batch packed by prompt (``pack``). The per-completion tensors have the plain path's roles
    in a completion-aligned layout: position t of completion n is its token t (``completion_start`` is 0).

    ``images`` names, per packed row with an image and in row order, the index of its image among the step's
    distinct images (``Plan.image_samples``), whose vision features are computed once per step.
    """

    input_ids: torch.Tensor  # [R, L] long, right-padded
    allowed: torch.Tensor  # [R, L, L] bool: query q may attend key k
    position_ids: torch.Tensor  # [3, R, L] long: t/h/w rotary positions
    keep: torch.Tensor  # [K] long: the packed positions whose logits are needed (any row)
    # [N, C] long: index into the flattened [R * K] kept logits of token t's predictor
    predictor: torch.Tensor
    target_ids: torch.Tensor  # [N, C] long: completion token t (pad where t >= its length)
    loss_mask: torch.Tensor  # [N, C] float: 1 on completion tokens that train
    completion_start: torch.Tensor  # [N] long: zeros (the layout starts at each completion's first token)
    truncated: torch.Tensor  # [N] bool
    adapter_version: torch.Tensor  # [N] long
    advantages: torch.Tensor  # [N] float
    sampling_logprobs: torch.Tensor  # [N, C] float: behaviour log-probs (0 where unknown)
    sampling_mask: torch.Tensor  # [N, C] float: 1 where a behaviour log-prob is known
    images: tuple[int, ...] = ()
    tokens: int = 0  # tokens the forward computes: the rows' real tokens, padding excluded

    @property
    def targets(self) -> torch.Tensor:
        """``[N, C]`` the token each completion position predicts."""
        return self.target_ids

    def attention_bias(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``[R, 1, L, L]`` additive mask: 0 where allowed, the dtype's lowest value elsewhere."""
        allowed = self.allowed.to(device)[:, None]  # [R, 1, L, L]
        return torch.zeros(allowed.shape, dtype=dtype,
                           device=device).masked_fill(~allowed, torch.finfo(dtype).min)

    def gather(self, logits: torch.Tensor) -> torch.Tensor:
        """``[R, K, V]`` logits at ``keep`` -> ``[N, C, V]`` each completion token's next-token logits."""
        return logits.flatten(0, 1)[self.predictor.to(logits.device)]


def _kept(where: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Only the positions some completion token is predicted from are projected to the vocabulary
    (``logits_to_keep``): ``where [N, C]`` flat (row * L + position) -> ``(keep [K], predictor [N, C])``,
    ``predictor`` indexing the ``[R * K]`` kept logits."""
    flat = where[mask.bool()] if mask.any() else where[:, :1].flatten()
    keep = torch.unique(flat % length)  # [K] sorted
    slot = torch.zeros(length, dtype=torch.long)  # [L]: each kept position's index in keep
    slot[keep] = torch.arange(len(keep))
    return keep, (where // length) * len(keep) + slot[where % length]


def pack(samples: Sequence[TrainSample], pieces: Sequence[range], piece_images: Sequence[int],
         positions: PositionFn, pad_id: int) -> Packed:
    """Pack ``pieces`` (runs of ``samples`` sharing a prompt) into one row each; ``piece_images[i]`` is piece
    i's image index (-1: none). ``positions`` gives a prompt's position ids continued over text (see
    ``PositionFn``). Completions are numbered in piece order (``n``), matching ``samples`` order."""
    rows = [[samples[i] for i in piece] for piece in pieces]
    lengths = [len(r[0].prompt_ids) + sum(len(s.completion_ids) for s in r) for r in rows]
    n, length = sum(len(r) for r in rows), max(lengths)
    c = max(1, *(len(s.completion_ids) for r in rows for s in r))
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)  # [R, L]
    # [R, L]: 0 prompt, j + 1 completion j, -1 pad
    seg = torch.full((len(rows), length), -1, dtype=torch.long)
    pos = torch.zeros((3, len(rows), length), dtype=torch.long)  # [3, R, L]
    where = torch.zeros((n, c), dtype=torch.long)  # [N, C]: (row, packed position) flattened as row * L + p
    targets = torch.full((n, c), pad_id, dtype=torch.long)  # [N, C]
    mask = torch.zeros((n, c), dtype=torch.float32)  # [N, C]
    sampling = torch.zeros((n, c), dtype=torch.float32)  # [N, C]
    sampling_mask = torch.zeros((n, c), dtype=torch.float32)  # [N, C]
    k = 0
    for r, row in enumerate(rows):
        lp = len(row[0].prompt_ids)
        longest = max(len(s.completion_ids) for s in row)
        base = positions(row[0], lp + longest)  # [3, Lp + longest]
        input_ids[r, :lp] = torch.tensor(row[0].prompt_ids, dtype=torch.long)
        seg[r, :lp] = 0
        pos[:, r, :lp] = base[:, :lp]
        start = lp
        for j, s in enumerate(row):
            lc = len(s.completion_ids)
            input_ids[r, start : start + lc] = torch.tensor(s.completion_ids, dtype=torch.long)
            seg[r, start : start + lc] = j + 1
            pos[:, r, start : start + lc] = base[:, lp : lp + lc]
            # Token t sits at start + t; the prompt's last token predicts t = 0, token t - 1 the others.
            src = torch.tensor([lp - 1, *range(start, start + lc - 1)][:lc], dtype=torch.long)
            where[k, :lc] = r * length + src
            targets[k, :lc] = torch.tensor(s.completion_ids, dtype=torch.long)
            mask[k, :lc] = 1.0
            if s.sampling_logprobs is not None and lc:
                sampling[k, :lc] = torch.tensor(s.sampling_logprobs, dtype=torch.float32)
                sampling_mask[k, :lc] = 1.0
            start += lc
            k += 1
    causal = torch.ones((length, length), dtype=torch.bool).tril()  # [L, L]
    key, query = seg[:, None, :], seg[:, :, None]  # [R, 1, L] by key, [R, L, 1] by query
    allowed = causal & ((key == 0) | (key == query))  # [R, L, L]
    keep, predictor = _kept(where, mask, length)
    flat_samples = [s for row in rows for s in row]
    return Packed(
        input_ids=input_ids, allowed=allowed, position_ids=pos, keep=keep, predictor=predictor,
        target_ids=targets, loss_mask=mask, completion_start=torch.zeros(n, dtype=torch.long),
        truncated=torch.tensor([s.truncated for s in flat_samples], dtype=torch.bool),
        adapter_version=torch.tensor([s.adapter_version for s in flat_samples], dtype=torch.long),
        advantages=torch.tensor([s.advantage for s in flat_samples], dtype=torch.float32),
        sampling_logprobs=sampling, sampling_mask=sampling_mask,
        images=tuple(i for i in piece_images if i >= 0),
        tokens=sum(lengths))


@dataclass(frozen=True)
class Plan:
    """How one rank's samples are packed: ``micro_batches[m]`` lists micro-batch m's pieces (runs of samples
    sharing a prompt), ``piece_images[m]`` each piece's image index (-1: none), and ``image_samples[i]`` a
    sample holding distinct image i (its features are computed once for the step)."""

    micro_batches: tuple[tuple[range, ...], ...]
    piece_images: tuple[tuple[int, ...], ...]
    image_samples: tuple[int, ...]


def plan(samples: Sequence[TrainSample], size: int) -> Plan:
    """The packing plan of ``samples`` at ``size`` completions per micro-batch (see the module docstring)."""
    runs = prompt_runs(samples)
    image_of_run: list[int] = []
    image_samples: list[int] = []
    for run in runs:
        has_image = samples[run.start].pixel_values is not None
        image_of_run.append(len(image_samples) if has_image else -1)
        if has_image:
            image_samples.append(run.start)
    run_of = {i: r for r, run in enumerate(runs) for i in run}
    mbs = group_micro_batches(runs, size)
    return Plan(micro_batches=tuple(tuple(mb) for mb in mbs),
                piece_images=tuple(tuple(image_of_run[run_of[p.start]] for p in mb) for mb in mbs),
                image_samples=tuple(image_samples))


@torch.no_grad()  # type: ignore[untyped-decorator]
def vision_features(model: Any, samples: Sequence[TrainSample], device: torch.device,
                    dtype: torch.dtype) -> Any:
    """The frozen vision tower's output (``model.get_image_features``, ``model`` the Qwen-VL model under the
    LM
    head) for these samples' images in one call, so every ZeRO-3 rank joins one gather of the tower per step;
    None without images. The tower is frozen and has no dropout, so one no-grad pass serves every forward."""
    if not samples:
        return None
    pixels = torch.cat([s.pixel_values for s in samples if s.pixel_values is not None])  # [sum P, D]
    grids = torch.cat([s.image_grid_thw for s in samples if s.image_grid_thw is not None])  # [n_images, 3]
    return model.get_image_features(pixel_values=pixels.to(device, dtype),
                                    image_grid_thw=grids.to(device, torch.long),
                                    return_dict=True)


def rope_positions(model: Any) -> PositionFn:
    """``PositionFn`` from the model's own ``get_rope_index`` (``model`` the Qwen-VL model under the LM head):
    the positions a separate sequence [prompt, text] gets, mRoPE over the image; 0..length-1 without one."""

    def positions(sample: TrainSample, length: int) -> torch.Tensor:
        if sample.image_grid_thw is None or sample.mm_token_type_ids is None:
            return torch.arange(length).expand(3, -1)  # [3, length]
        # completion tokens: text (type 0); their ids do not matter
        tail = [0] * (length - len(sample.prompt_ids))
        ids = torch.tensor([[*sample.prompt_ids, *tail]])  # [1, length]
        types = torch.tensor([[*sample.mm_token_type_ids, *tail]])  # [1, length]
        pos, _ = model.get_rope_index(input_ids=ids, mm_token_type_ids=types,
                                      image_grid_thw=sample.image_grid_thw.to(torch.long))  # [3, 1, length]
        return pos[:, 0]  # type: ignore[no-any-return]

    return positions


def select_images(features: Any, images: Sequence[int]) -> Any:
    """The vision tower's output (``get_image_features`` of the step's distinct images: per-image tuples in
    ``pooler_output`` and, for Qwen3-VL, in each ``deepstack_features`` layer) restricted to ``images``, in
    that order: what a Qwen-VL forward takes as ``mm_encoder_outputs["image"]`` instead of pixels."""
    fields: dict[str, Any] = {"pooler_output": tuple(features.pooler_output[i] for i in images)}
    deepstack = getattr(features, "deepstack_features", None)
    if deepstack is not None:
        fields["deepstack_features"] = [tuple(layer[i] for i in images) for layer in deepstack]
    return type(features)(**fields)


def packed_micro_batches(model: Any, samples: Sequence[TrainSample], size: int, pad_id: int,
                         device: torch.device,
                         dtype: torch.dtype) -> tuple[list[Packed], Any]:
    """One rank's GRPO samples as packed micro-batches (``plan``, ``pack``) and the step's vision features
    (``vision_features``); ``model`` is the Qwen-VL model under the LM head."""
    made = plan(samples, size)
    positions = rope_positions(model)
    batches = [pack(samples, mb, images, positions, pad_id)
               for mb, images in zip(made.micro_batches, made.piece_images, strict=True)]
    return batches, vision_features(model, [samples[i] for i in made.image_samples], device, dtype)


def forward(engine: Callable[..., Any], batch: Packed, features: Any, device: torch.device,
            dtype: torch.dtype) -> torch.Tensor:
    """``[N, C, V]`` each completion token's next-token logits from one forward of the packed rows through
    ``engine`` (the DeepSpeed engine or the PEFT model); images enter as the step's vision ``features``,
    never as pixels, and only the ``keep`` positions are projected to the vocabulary."""
    images = None
    if batch.images:
        if features is None:
            raise ValueError("a packed micro-batch with images needs the step's vision features "
                             "(packed_micro_batches returns them)")
        images = {"image": select_images(features, batch.images)}
    out = engine(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_bias(dtype, device),
                 position_ids=batch.position_ids.to(device), mm_encoder_outputs=images,
                 logits_to_keep=batch.keep.to(device), use_cache=False)
    return batch.gather(out.logits)
