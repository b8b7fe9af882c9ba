"""MLAE (masked LoRA experts; docs/algorithms.md, "MLAE"; arXiv 2405.18897) as a LoRA layer inside PEFT.

Per adapted linear layer with rank r: `y = W x + B diag(lambda * m) A x`, where column i of B and row i of A
form the rank-1 expert i, lambda (shape (r,), float32, initialised to alpha) are learnable per-expert scales
and m is the expert mask of `learner.mlae_masks`. PEFT's `scaling` is kept at 1 (lora_alpha = r): lambda
replaces alpha / r. In eval mode m is the fixed mask (all ones unless fixed/mixed), so the layer is exactly
a LoRA layer with A' = A and B' = B diag(lambda * m_fixed) - the form `learner.export` ships.

How it plugs into PEFT 0.21, and why (read `peft/tuners/lora/{layer,variants,model}.py`):
- A `LoraVariant` (as DoRA is) owns forward, merge and unmerge, and `lora.Linear` routes all of them,
  including the mixed-adapter batch path, to it. But PEFT picks a variant only from `LoraConfig` fields
  tagged `is_lora_variant`; adding one means subclassing `LoraConfig`, which `PeftConfig.from_pretrained`
  and vLLM would then have to know about.
- `LoraConfig._register_custom_module({nn.Linear: factory})` is PEFT's documented hook for own LoRA layer
  classes (developer guide "custom models"). It builds our `MLAELinear`, a subclass of `lora.Linear`, so
  everything keyed on `LoraLayer` keeps working: `get_peft_model`, `disable_adapter` (the GRPO reference
  log-probs), `save_pretrained`/`from_pretrained` (lambda is saved as `lora_mlae_scale`),
  `merge_and_unload`, marking only adapter weights trainable, ZeRO-3 gathering of submodule parameters.
So we use both: the custom-module mapping to get our layer, whose `resolve_lora_variant` returns
`MLAEVariant`, so PEFT's own forward/merge dispatch runs the MLAE maths; adapter_config.json stays a plain
LoRA config. The factory also computes each layer's rates from its name (depth) when PEFT creates it.

lambda lives in `ExpertScale`, a module whose forward is called, rather than in a ParameterDict: DeepSpeed
ZeRO-3 gathers a partitioned parameter when its own module runs, and a ParameterDict never runs.

Precision: lambda is created in float32 and the gate lambda * m is computed in float32; PEFT's adapter
autocast keeps all adapter weights float32 on a bf16 base. DeepSpeed's `bf16` mode, however, casts every
parameter (lambda included) to bf16 and keeps the float32 master copy in its optimizer; to keep lambda
itself in float32 there, use DeepSpeed's `torch_autocast` mode instead of `bf16`.

Distributed: the stochastic masks come from the global RNG, so ranks seeded alike draw the same masks in
the same step; ranks seeded differently would average gradients of different masks, and a dropped expert
would then get gradient from another rank's copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraVariant
from torch import nn

from learner.config import MLAEConfig
from learner.mlae_masks import fixed_keep_mask, layer_index, layer_rate, stochastic_mask

# Module-name components of vision towers across Qwen-VL generations; never adapted (vLLM applies LoRA to
# the language model only, and the tower stays frozen).
VISION_PARTS = frozenset({"visual", "vision_tower", "vision_model", "vision"})
MLAE_CONFIG_FILE = "mlae_config.json"


@dataclass(frozen=True)
class LayerSpec:
    """MLAE settings of one adapted layer: stochastic drop rate p and the fixed keep mask (r entries)."""

    p: float
    keep: tuple[float, ...]


class ExpertScale(nn.Module):  # type: ignore[misc]
    """lambda: shape (r,), float32 whatever the model dtype; forward returns lambda * mask (shape (r,))."""

    def __init__(self, rank: int, alpha: float, device: torch.device | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((rank,), float(alpha), dtype=torch.float32, device=device))

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return self.weight.float() * mask


class MLAEVariant(LoraVariant):
    """The MLAE maths behind `lora.Linear`'s forward, merge and unmerge."""

    @staticmethod
    def init(module: MLAELinear, adapter_name: str, **kwargs: Any) -> None:  # type: ignore[override]
        spec = module.mlae_spec[adapter_name]
        device = module.adapter_weight("lora_A", adapter_name).device
        module.lora_mlae_scale[adapter_name] = ExpertScale(module.r[adapter_name], module.mlae_alpha, device)
        module.mlae_keep[adapter_name] = torch.tensor(spec.keep, dtype=torch.float32, device=device)

    @staticmethod
    def merge_safe(module: MLAELinear, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return orig_weight + module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def merge_unsafe(module: MLAELinear, active_adapter: str, orig_weight: torch.Tensor) -> None:  # type: ignore[override]
        orig_weight.data += module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def unmerge(module: MLAELinear, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return orig_weight.data - module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def forward(module: MLAELinear, active_adapter: str, x: torch.Tensor, result: torch.Tensor,  # type: ignore[override]
                **kwargs: Any) -> torch.Tensor:
        lora_a = module.lora_A[active_adapter]
        lora_b = module.lora_B[active_adapter]
        h = lora_a(module.lora_dropout[active_adapter](x))                    # [..., r]
        gate = module.lora_mlae_scale[active_adapter](module.mlae_mask(active_adapter))  # [r], float32
        out: torch.Tensor = result + lora_b(h * gate.to(h.dtype))          # [..., out]
        return out


class MLAELinear(LoraLinear):
    """A `lora.Linear` whose adapters are MLAE adapters (scaling 1, per-expert scales, expert masks)."""

    adapter_layer_names = (*LoraLinear.adapter_layer_names, "lora_mlae_scale")

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config: LoraConfig,  # type: ignore[override]
                     **kwargs: Any) -> None:
        spec = kwargs.pop("mlae_spec", None)
        alpha = kwargs.pop("mlae_alpha", None)
        if spec is None or alpha is None:
            raise ValueError("MLAELinear adapters are created by learner.mlae.apply_mlae / load_mlae only; "
                             "adding a second adapter through PEFT's add_adapter is not supported")
        if not hasattr(self, "lora_mlae_scale"):
            self.lora_mlae_scale = nn.ModuleDict()
            self.mlae_keep = BufferDict(persistent=False)  # recomputed from the seed, never saved
            self.mlae_spec: dict[str, LayerSpec] = {}
        self.mlae_spec[adapter_name] = spec
        self.mlae_alpha = float(alpha)
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    def resolve_lora_variant(self, *, config: LoraConfig, **kwargs: Any) -> LoraVariant:  # type: ignore[override]
        return MLAEVariant()

    def mlae_mask(self, adapter_name: str) -> torch.Tensor:
        """Shape (r,) float32: the fixed keep mask, times a fresh stochastic mask when training."""
        keep: torch.Tensor = self.mlae_keep[adapter_name]
        p = self.mlae_spec[adapter_name].p
        if self.training and p > 0.0:
            return keep * stochastic_mask(keep.numel(), p, keep.device)
        return keep

    def expert_scales(self, adapter_name: str) -> torch.Tensor:
        """Shape (r,) float32: lambda * fixed mask, the per-rank scale of the inference-time LoRA."""
        keep: torch.Tensor = self.mlae_keep[adapter_name]
        return self.adapter_weight("lora_mlae_scale", adapter_name).float() * keep

    def adapter_weight(self, kind: str, adapter_name: str) -> torch.Tensor:
        """`self.<kind>[adapter_name].weight` (kind: lora_A, lora_B or lora_mlae_scale), typed."""
        weight = getattr(self, kind)[adapter_name].weight
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"{kind}[{adapter_name!r}].weight is {type(weight).__name__}, not a tensor")
        return weight

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """Shape (out, in): B diag(lambda * fixed mask) A, in the LoRA weights' dtype (scaling is 1)."""
        a = self.adapter_weight("lora_A", adapter).float()            # [r, in]
        b = self.adapter_weight("lora_B", adapter)                    # [out, r]
        delta = (b.float() * self.expert_scales(adapter)) @ a         # [out, in]
        return delta.to(b.dtype)

    def __repr__(self) -> str:
        return "mlae." + super().__repr__()


class _MLAELayerFactory:
    """What PEFT's custom-module dispatch calls for each targeted nn.Linear: builds an `MLAELinear`."""

    def __init__(self, cfg: MLAEConfig, num_layers: int) -> None:
        self.cfg = cfg
        self.num_layers = num_layers

    def spec(self, module_name: str) -> LayerSpec:
        cfg = self.cfg
        depth = layer_index(module_name)
        if depth is None and cfg.layerwise != "uniform":
            raise ValueError(f"{module_name}: no '.layers.N.' in the name, so layerwise={cfg.layerwise!r} "
                             "cannot place it; use layerwise='uniform' or target decoder-layer projections")

        def rate(r: float) -> float:
            return r if depth is None else layer_rate(r, depth, self.num_layers, cfg.layerwise)

        p = rate(cfg.p) if cfg.mask in ("stochastic", "mixed") else 0.0
        fixed = rate(cfg.fixed_p) if cfg.mask in ("fixed", "mixed") else 0.0
        keep = fixed_keep_mask(cfg.rank, fixed, cfg.seed, module_name)
        return LayerSpec(p=p, keep=tuple(keep.tolist()))

    def __call__(self, target: nn.Module, adapter_name: str, config: LoraConfig, **kwargs: Any) -> MLAELinear:
        name = str(kwargs["target_name"])
        return MLAELinear(target, adapter_name, config=config, mlae_spec=self.spec(name),
                          mlae_alpha=self.cfg.alpha, **kwargs)


def language_model_targets(model: nn.Module, names: tuple[str, ...]) -> list[str]:
    """Full names of the nn.Linear modules whose last name part is in `names`, outside any vision tower."""
    found = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in names
             and not VISION_PARTS.intersection(n.split("."))]
    if not found:
        raise ValueError(f"no language-model nn.Linear named any of {list(names)}; "
                         "check MLAEConfig.target_modules against model.named_modules()")
    return sorted(found)


def num_decoder_layers(model: nn.Module) -> int:
    config: Any = model.config
    text = getattr(config, "text_config", None) or config
    return int(text.num_hidden_layers)


def mlae_lora_config(model: nn.Module, cfg: MLAEConfig) -> LoraConfig:
    """The LoraConfig of an MLAE model: rank r, lora_alpha = r (scaling 1), our layer class registered."""
    lora_config = LoraConfig(r=cfg.rank, lora_alpha=cfg.rank, lora_dropout=0.0, bias="none",
                             target_modules=language_model_targets(model, cfg.target_modules))
    lora_config._register_custom_module({nn.Linear: _MLAELayerFactory(cfg, num_decoder_layers(model))})  # type: ignore[dict-item]
    return lora_config


def apply_mlae(model: nn.Module, cfg: MLAEConfig, adapter_name: str = "default") -> PeftModel:
    """Wrap a loaded Qwen-VL model with MLAE on its language model's target projections.

    Only MLAE parameters (lora_A, lora_B, lora_mlae_scale) are trainable; the base model, vision tower
    included, is frozen. The MLAEConfig is kept on the returned model as `mlae_config` for checkpoints.
    """
    peft_model = get_peft_model(model, mlae_lora_config(model, cfg), adapter_name=adapter_name)  # type: ignore[arg-type]
    peft_model.mlae_config = cfg  # type: ignore[assignment]
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    if any(VISION_PARTS.intersection(n.split(".")) for n in trainable):
        raise RuntimeError(f"a vision-tower parameter is trainable after apply_mlae: {trainable}")
    return peft_model


def save_mlae(peft_model: PeftModel, out: str | Path) -> Path:
    """PEFT `save_pretrained` plus `mlae_config.json`, which `load_mlae` needs to rebuild masks and rates."""
    out = Path(out)
    peft_model.save_pretrained(str(out))
    cfg: MLAEConfig = peft_model.mlae_config
    (out / MLAE_CONFIG_FILE).write_text(cfg.model_dump_json(indent=2) + "\n")
    return out


def load_mlae(model: nn.Module, path: str | Path, is_trainable: bool = False,
              adapter_name: str = "default") -> PeftModel:
    """`PeftModel.from_pretrained` for a directory written by `save_mlae` (MLAE layers, not plain LoRA)."""
    path = Path(path)
    cfg_file = path / MLAE_CONFIG_FILE
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} is missing: {path} is not an MLAE adapter written by save_mlae "
                                "(a plain LoRA adapter loads with PeftModel.from_pretrained)")
    cfg = MLAEConfig.model_validate(json.loads(cfg_file.read_text()))
    peft_model = PeftModel.from_pretrained(model, str(path), adapter_name=adapter_name,  # type: ignore[arg-type]
                                           config=mlae_lora_config(model, cfg), is_trainable=is_trainable)
    peft_model.mlae_config = cfg  # type: ignore[assignment]
    return peft_model


def mlae_layers(model: nn.Module) -> dict[str, MLAELinear]:
    """Every MLAE layer of a model, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MLAELinear)}
