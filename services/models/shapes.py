"""Model shapes: the widths of released Qwen-VL checkpoints, and the small ones used on CPU.

A `Shape` is everything `medground init-model` needs to write a config that transformers and vLLM load as
they would the released checkpoint: text width, depth, heads, grouped KV heads, head size, MLP width,
vocabulary, tied embeddings, rotary settings, and the vision tower. Weights are random (nothing can be
downloaded here), so a shape reproduces a checkpoint's memory, speed and module names, not its answers.

Real shapes (from the released `config.json` of each checkpoint):

| shape           | hidden | layers | heads / KV | head | MLP    | vocab   | vision (depth x width) |
|-----------------|--------|--------|------------|------|--------|---------|------------------------|
| qwen2_5_vl_3b   | 2048   | 36     | 16 / 2     | 128  | 11008  | 151,936 | 32 x 1280 (tied emb.)  |
| qwen2_5_vl_7b   | 3584   | 28     | 28 / 4     | 128  | 18944  | 152,064 | 32 x 1280              |
| qwen3_vl_2b     | 2048   | 28     | 16 / 8     | 128  | 6144   | 151,936 | 24 x 1024 (tied emb.)  |
| qwen3_vl_4b     | 2560   | 36     | 32 / 8     | 128  | 9728   | 151,936 | 24 x 1024 (tied emb.)  |
| qwen3_vl_8b     | 4096   | 36     | 32 / 8     | 128  | 12288  | 151,936 | 27 x 1152              |

`truncated(shape, layers, vision_layers)` keeps the width and cuts the depth, which is how a real-width
model fits a CPU test: the 3B shape with 2 text layers and 2 vision blocks has ~0.55 B parameters, most
of them the 151,936 x 2048 embedding. Tiny and small shapes keep head size 32 (vLLM's CPU attention needs
at least 32) and a 1,024-token vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from rollout.images import Family

RealShape = Literal["qwen2_5_vl_3b", "qwen2_5_vl_7b", "qwen3_vl_2b", "qwen3_vl_4b", "qwen3_vl_8b"]
Size = Literal["tiny", "small"]
REAL_SHAPES: tuple[RealShape, ...] = ("qwen2_5_vl_3b", "qwen2_5_vl_7b", "qwen3_vl_2b",
                                      "qwen3_vl_4b", "qwen3_vl_8b")


@dataclass(frozen=True)
class Shape:
    """One model's dimensions. `vision_special` holds the tower's family-specific block indexes:
    Qwen2.5-VL's full-attention blocks (the others use windowed attention), Qwen3-VL's DeepStack blocks
    (their features are added to the first language-model layers); Qwen2-VL has none."""

    family: Family
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tie_embeddings: bool
    rope_theta: float
    # temporal, height, width halves of the rotary dims: sums to head_dim/2
    mrope_section: tuple[int, int, int]
    vision_hidden: int
    vision_depth: int
    vision_heads: int
    vision_intermediate: int
    vision_special: tuple[int, ...]
    vision_positions: int = 2304  # Qwen3-VL's learned position grid (48 x 48), interpolated to each image
    max_positions: int = 32768

    def __post_init__(self) -> None:
        if sum(self.mrope_section) * 2 != self.head_dim:
            raise ValueError(f"mrope_section {self.mrope_section} must sum to head_dim/2 = "
                             f"{self.head_dim // 2}")
        if self.heads % self.kv_heads:
            raise ValueError(f"{self.heads} attention heads do not split into {self.kv_heads} KV groups")


_QWEN25_VISION = dict(vision_hidden=1280, vision_depth=32, vision_heads=16, vision_intermediate=3420,
                      vision_special=(7, 15, 23, 31))
REAL: dict[RealShape, Shape] = {
    "qwen2_5_vl_3b": Shape("qwen2_5_vl", hidden=2048, layers=36, heads=16, kv_heads=2, head_dim=128,
                           intermediate=11008, vocab=151936, tie_embeddings=True, rope_theta=1e6,
                           mrope_section=(16, 24, 24), **_QWEN25_VISION),  # type: ignore[arg-type]
    "qwen2_5_vl_7b": Shape("qwen2_5_vl", hidden=3584, layers=28, heads=28, kv_heads=4, head_dim=128,
                           intermediate=18944, vocab=152064, tie_embeddings=False, rope_theta=1e6,
                           mrope_section=(16, 24, 24), **_QWEN25_VISION),  # type: ignore[arg-type]
    "qwen3_vl_2b": Shape("qwen3_vl", hidden=2048, layers=28, heads=16, kv_heads=8, head_dim=128,
                         intermediate=6144, vocab=151936, tie_embeddings=True, rope_theta=5e6,
                         mrope_section=(24, 20, 20), vision_hidden=1024, vision_depth=24, vision_heads=16,
                         vision_intermediate=4096, vision_special=(5, 11, 17)),
    "qwen3_vl_4b": Shape("qwen3_vl", hidden=2560, layers=36, heads=32, kv_heads=8, head_dim=128,
                         intermediate=9728, vocab=151936, tie_embeddings=True, rope_theta=5e6,
                         mrope_section=(24, 20, 20), vision_hidden=1024, vision_depth=24, vision_heads=16,
                         vision_intermediate=4096, vision_special=(5, 11, 17)),
    "qwen3_vl_8b": Shape("qwen3_vl", hidden=4096, layers=36, heads=32, kv_heads=8, head_dim=128,
                         intermediate=12288, vocab=151936, tie_embeddings=False, rope_theta=5e6,
                         mrope_section=(24, 20, 20), vision_hidden=1152, vision_depth=27, vision_heads=16,
                         vision_intermediate=4304, vision_special=(8, 16, 24)),
}


def small_shape(family: Family, size: Size) -> Shape:
    """The CPU shapes: `tiny` (~0.7M parameters, tests) and `small` (a few million, the demo)."""
    hidden, layers, heads, intermediate, vision_hidden, vision_heads = {
        "tiny": (128, 2, 4, 256, 64, 2), "small": (256, 4, 8, 512, 128, 4)}[size]
    # Qwen3-VL's vision MLP is 4x wide with learned position embeddings; 2x keeps these tiny.
    return Shape(family, hidden=hidden, layers=layers, heads=heads, kv_heads=2, head_dim=32,
                 intermediate=intermediate, vocab=1024, tie_embeddings=False,
                 rope_theta=5e6 if family == "qwen3_vl" else 1e6,
                 mrope_section=(6, 5, 5) if family == "qwen3_vl" else (4, 6, 6),
                 vision_hidden=vision_hidden, vision_depth=2, vision_heads=vision_heads,
                 vision_intermediate=2 * vision_hidden,
                 vision_special=() if family == "qwen2_vl" else (1,) if family == "qwen2_5_vl" else (0,),
                 vision_positions=256, max_positions=4096)


def truncated(shape: Shape, layers: int | None = None, vision_layers: int | None = None) -> Shape:
    """The same widths with fewer text layers and/or vision blocks.

    Special vision blocks beyond the new depth are dropped; if none is left, the last block becomes one
    (a Qwen2.5-VL tower needs a full-attention block, a Qwen3-VL tower a DeepStack block).
    """
    layers = shape.layers if layers is None else layers
    depth = shape.vision_depth if vision_layers is None else vision_layers
    if not 1 <= layers <= shape.layers:
        raise ValueError(f"--layers {layers} must be between 1 and the shape's {shape.layers} text layers")
    if not 1 <= depth <= shape.vision_depth:
        raise ValueError(f"--vision-layers {depth} must be between 1 and the shape's {shape.vision_depth} "
                         "blocks")
    special = tuple(i for i in shape.vision_special if i < depth)
    if shape.vision_special and not special:
        special = (depth - 1,)
    return replace(shape, layers=layers, vision_depth=depth, vision_special=special)


def lora_bytes(shape: Shape, rank: int, bytes_per_value: int = 4) -> int:
    """Bytes of a LoRA adapter of rank `rank` on every language-model linear layer (q, k, v, o, gate, up,
    down) at the shape's depth: A is (r, in) and B is (out, r) per module; fp32 as the learner exports it.

    >>> lora_bytes(REAL["qwen2_5_vl_3b"], 16) / 2**20  # MiB pushed per step at rank 16 on all 36 layers
    114.1875
    """
    h, q, kv, m = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.intermediate  # noqa: E501
    in_out = [(h, q), (h, kv), (h, kv), (q, h), (h, m), (h, m), (m, h)]  # q k v o gate up down
    return shape.layers * rank * sum(i + o for i, o in in_out) * bytes_per_value
